"""FLOP buckets: the MAC range of a supernet split into equal parts, for selection and comparison alike."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FlopBuckets:
    """The range [lo, hi] of MACs split into `count` equal buckets; a subnet on an edge belongs to the upper one."""

    lo: int
    hi: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or self.hi < self.lo:
            raise ValueError(f"FlopBuckets needs count >= 1 and lo <= hi, got {self.count}, [{self.lo}, {self.hi}]")

    @property
    def edges(self) -> list[float]:
        return [self.lo + (self.hi - self.lo) * i / self.count for i in range(self.count + 1)]

    def index(self, macs: int | float) -> int | None:
        """The bucket of a MAC count, or None outside [lo, hi]. Exact for integer MACs."""
        if macs < self.lo or macs > self.hi:
            return None
        if self.hi == self.lo:
            return 0
        return min(self.count - 1, math.floor((macs - self.lo) * self.count / (self.hi - self.lo)))

    def bounds(self, index: int) -> tuple[float, float]:
        edges = self.edges
        return edges[index], edges[index + 1]
