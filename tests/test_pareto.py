"""Mean Pareto accuracy and the best subnet per bucket, against examples computed by hand."""

import pytest

from orchestrator.reports.pareto import Point, best_per_bucket, mean_pareto_accuracy, pareto_front
from workers.selection import FlopBuckets

# MACs from 100 to 300 (normalised: (macs - 100) / 200); the dominated subnets must not count.
POINTS = [
    Point(100, 40.0, "smallest"),
    Point(150, 60.0, "b"),
    Point(200, 55.0, "dominated by b"),
    Point(250, 70.0, "c"),
    Point(300, 69.0, "largest, dominated by c"),
]


def test_the_front_keeps_only_subnets_no_cheaper_one_beats():
    assert [p.subnet_id for p in pareto_front(POINTS)] == ["smallest", "b", "c"]
    assert pareto_front([Point(5, 10.0), Point(5, 12.0)]) == [Point(5, 12.0)]


def test_mean_pareto_accuracy_by_hand():
    # Front at normalised MACs 0, 0.25, 0.75 with top-1 40, 60, 70, then flat to 1:
    # 0.25 x (40 + 60) / 2 + 0.5 x (60 + 70) / 2 + 0.25 x 70 = 12.5 + 32.5 + 17.5 = 62.5
    assert mean_pareto_accuracy(POINTS, 100, 300) == pytest.approx(62.5)
    # Normalised over the supernet's range: on [100, 500] the same subnets sit at 0, 0.125, 0.375:
    # 0.125 x 50 + 0.25 x 65 + 0.625 x 70 = 6.25 + 16.25 + 43.75 = 66.25
    assert mean_pareto_accuracy(POINTS, 100, 500) == pytest.approx(66.25)
    # The smallest and the largest alone: the mean of their top-1.
    assert mean_pareto_accuracy([Point(100, 40.0), Point(300, 80.0)], 100, 300) == pytest.approx(60.0)


def test_budgets_below_the_cheapest_evaluated_subnet_buy_nothing():
    # Only b and c: 0 on [0, 0.25), then 0.5 x (60 + 70) / 2 + 0.25 x 70 = 32.5 + 17.5
    assert mean_pareto_accuracy(POINTS[1:4], 100, 300) == pytest.approx(50.0)


def test_what_more_subnets_do_and_points_outside_the_range():
    base = mean_pareto_accuracy(POINTS, 100, 300)
    assert mean_pareto_accuracy([*POINTS, Point(120, 30.0)], 100, 300) == pytest.approx(base)  # dominated
    # Above the line from (0, 40) to (0.25, 60): 0.1 x 45 + 0.15 x 55 = 12.75 instead of 12.5
    assert mean_pareto_accuracy([*POINTS, Point(120, 50.0)], 100, 300) == pytest.approx(base + 0.25)
    # Pareto-optimal but under the line from (0.25, 60) to (0.75, 70): 0.25 x 61 + 0.25 x 66 = 31.75, not 32.5
    assert mean_pareto_accuracy([*POINTS, Point(200, 62.0)], 100, 300) == pytest.approx(base - 0.75)
    assert mean_pareto_accuracy([Point(50, 80.0)], 100, 300) == pytest.approx(80.0)  # below lo: counts from 0
    assert mean_pareto_accuracy([], 100, 300) is None
    assert mean_pareto_accuracy([Point(7, 33.0)], 7, 7) == 33.0  # a one-subnet space


def test_best_per_bucket_by_hand():
    best = best_per_bucket(POINTS, FlopBuckets(100, 300, 4))  # edges 100, 150, 200, 250, 300
    assert [p.subnet_id if p else None for p in best] == ["smallest", "b", "dominated by b", "c"]
    sparse = best_per_bucket([Point(100, 1.0), Point(299, 2.0), Point(301, 99.0)], FlopBuckets(100, 300, 4))
    assert [p.top1 if p else None for p in sparse] == [1.0, None, None, 2.0]  # 301 is outside the range
    tie = best_per_bucket([Point(160, 5.0, "dearer"), Point(155, 5.0, "cheaper")], FlopBuckets(100, 300, 2))
    assert tie[0].subnet_id == "cheaper"
