"""Pareto fronts of top-1 against MACs, the DepS paper's mean Pareto accuracy, and the best subnet per FLOP bucket.

Mean Pareto accuracy (DepS, Sec. 5.1) is the area under the curve of top-1 against
MACs normalised to [0, 1] over the supernet's MAC range, taken over the Pareto
front: the front's subnets joined by straight lines (the trapezoidal rule, as any
AUC), held flat after the last one (a larger budget can still buy it) and 0 before
the first (a smaller budget buys nothing). With the smallest and the largest subnet
evaluated, as every selection strategy does by default, the curve spans [0, 1] and
the area is the mean top-1 along the front, both ends weighted alike.

The straight lines are optimistic between two subnets: another Pareto-optimal subnet
found under such a line lowers the area a little. Compare methods evaluated with the
same protocol (the best subnet per FLOP bucket, or populations of equal size).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from workers.flop_buckets import FlopBuckets


@dataclass(frozen=True)
class Point:
    macs: float
    top1: float
    subnet_id: str = ""


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The subnets no other beats with no more MACs, by MACs ascending (top-1 strictly rising)."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.macs, -p.top1)):
        if not front or p.top1 > front[-1].top1:
            front.append(p)
    return front


def _normalised(macs: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (macs - lo) / (hi - lo)))


def mean_pareto_accuracy(points: Sequence[Point], lo: float, hi: float) -> float | None:
    """The area under the Pareto front over MACs normalised to [0, 1] on [lo, hi] (MACs outside are clipped).

    None without points; with lo == hi (a single-subnet space) the best top-1.
    """
    front = pareto_front(points)
    if not front:
        return None
    if hi <= lo:
        return front[-1].top1
    xs = [_normalised(p.macs, lo, hi) for p in front]
    area = sum((xs[i + 1] - xs[i]) * (front[i].top1 + front[i + 1].top1) / 2 for i in range(len(front) - 1))
    return area + (1.0 - xs[-1]) * front[-1].top1


def best_per_bucket(points: Iterable[Point], buckets: FlopBuckets) -> list[Point | None]:
    """The most accurate subnet in each bucket (fewer MACs wins a tie); None where a bucket has none."""
    best: list[Point | None] = [None] * buckets.count
    for p in points:
        b = buckets.index(p.macs)
        if b is None:
            continue
        current = best[b]
        if current is None or (p.top1, -p.macs) > (current.top1, -current.macs):
            best[b] = p
    return best
