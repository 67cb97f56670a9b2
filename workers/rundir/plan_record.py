"""The plan as its run directory keeps it (`plan.json`), read back as typed values.

The controller writes the resolved plan when a run is submitted; `deps-orch
status`, the reports and the estimates read it back through `PlanRecord`, never
by picking at the JSON themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.rundir.budget import BudgetSpec
from workers.rundir.layout import RunDir, as_run_dir


@dataclass(frozen=True)
class PhaseSpan:
    """A phase of training (the ledger's `phase` tag) and the epochs it spans, both included."""

    phase: str
    first_epoch: int
    last_epoch: int

    def to_dict(self) -> dict:
        return {"phase": self.phase, "first_epoch": self.first_epoch, "last_epoch": self.last_epoch}

    def as_tuple(self) -> tuple[str, int, int]:
        return self.phase, self.first_epoch, self.last_epoch


@dataclass(frozen=True)
class PlanRecord:
    run: str
    group: str | None
    method: str | None
    backend: str  # the spec's cluster.backend
    phases: tuple[PhaseSpan, ...]
    eval_subnets: int
    budget: BudgetSpec
    mac_range: tuple[int, int] | None  # the supernet's smallest and largest subnet
    num_classes: int | None
    trial_values: dict | None = None  # a sweep trial's values of the swept spec paths

    @property
    def epochs(self) -> int:
        return max((p.last_epoch + 1 for p in self.phases), default=0)

    def phase_tuples(self) -> list[tuple[str, int, int]]:
        return [p.as_tuple() for p in self.phases]

    @classmethod
    def from_dict(cls, data: dict) -> PlanRecord:
        """From a plan's description (`Plan.describe()`, as plan.json holds it); raises KeyError, TypeError."""
        space, dataset = data.get("space") or {}, data.get("dataset") or {}
        lo, hi = space.get("smallest_macs"), space.get("largest_macs")
        method = data.get("method")
        return cls(
            run=str(data["run"]),
            group=data.get("group"),
            method=method.get("name") if isinstance(method, dict) else method,
            backend=str((data.get("cluster") or {}).get("backend") or "local"),
            phases=tuple(
                PhaseSpan(str(p["phase"]), int(p["first_epoch"]), int(p["last_epoch"]))
                for p in data.get("phases") or []
            ),
            eval_subnets=int((data.get("evaluation") or {}).get("subnets") or 0),
            budget=BudgetSpec.model_validate(data.get("budget") or {}),
            mac_range=(int(lo), int(hi)) if isinstance(lo, int) and isinstance(hi, int) else None,
            num_classes=dataset.get("classes"),
            trial_values=data.get("trial_values"),
        )

    @classmethod
    def read(cls, run_dir: Path | RunDir) -> PlanRecord | None:
        """The run's plan, or None if it has none (or one this version cannot read)."""
        files = as_run_dir(run_dir)
        data = files.read_json(files.plan)
        if not isinstance(data, dict):
            return None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError):
            return None
