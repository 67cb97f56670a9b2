"""What a deployment allows: a subnet constraint on MACs and measured latency, and the best subnet under it."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from workers.sections import Section


class SubnetConstraint(Section):
    """`evaluation.constraint`: only subnets within these limits are evaluated, bred and exported."""

    max_macs: float | None = Field(None, gt=0, description="multiply-accumulates of one image, e.g. 1.5e8")
    max_latency_ms: float | None = Field(None, gt=0, description="batch-1 latency on the evaluation workers' device")

    @property
    def limited(self) -> bool:
        return self.max_macs is not None or self.max_latency_ms is not None

    def admits_macs(self, macs: float) -> bool:
        return self.max_macs is None or macs <= self.max_macs

    def admits_latency(self, ms: float | None) -> bool:
        """A subnet never timed is admitted only where latency is not limited."""
        return self.max_latency_ms is None or (ms is not None and ms <= self.max_latency_ms)

    def admits(self, row: dict) -> bool:
        """A subnet-table row (its `macs` and `latency_ms`) within the limits."""
        return self.admits_macs(row["macs"]) and self.admits_latency(row.get("latency_ms"))

    def describe(self) -> str:
        limits = []
        if self.max_macs is not None:
            limits.append(f"MACs <= {self.max_macs / 1e6:g}M")
        if self.max_latency_ms is not None:
            limits.append(f"latency <= {self.max_latency_ms:g} ms")
        return ", ".join(limits) or "no constraint"


def best_subnet(rows: Iterable[dict], constraint: SubnetConstraint) -> dict | None:
    """The most accurate row the constraint admits (fewer MACs, then the id, break ties); None if none is."""
    admitted = [r for r in rows if constraint.admits(r)]
    return max(admitted, key=lambda r: (r["top1"], -r["macs"], r["subnet_id"]), default=None)
