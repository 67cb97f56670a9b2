"""Deployment constraints and latency, in their pure parts: selection and breeding within a MAC limit, the best
subnet under a constraint, the latency median (on an injected clock) and the per-block lookup table's bookkeeping.

Constrained evaluation and search on a trained supernet are in tests/test_evaluation.py; `deps-orch export` of a
real run is in tests/test_dashboard_metrics.py.
"""

import random
from itertools import count

import pytest
import torch

from orchestrator.errors import UserError
from orchestrator.plan import make_plan
from orchestrator.spec_file import load_spec
from workers.constraint import SubnetConstraint, best_subnet
from workers.evaluation_spec import LatencySpec
from workers.latency import LatencyTable, measure_latency, median_ms, prediction_error
from workers.search import EvolutionarySearch, Scored
from workers.selection import (
    BucketSelection,
    EvolutionSelection,
    PopulationSelection,
    RandomSelection,
    SelectionError,
    SpreadSelection,
    mac_range,
    select_subnets,
)
from workers.supernet.profile import profile_subnet
from workers.supernet.space import mobilenetv3_space
from workers.supernet.supernet import ElasticSupernet

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)
LO, HI = mac_range(SPACE, 10)
LIMIT = SubnetConstraint(max_macs=LO + (HI - LO) * 0.4)


def macs(config) -> int:
    return profile_subnet(SPACE, config, 10).macs


@pytest.mark.parametrize(
    "strategy",
    [
        SpreadSelection(),
        RandomSelection(subnets=12),
        BucketSelection(buckets=3, per_bucket=2),
        EvolutionSelection(initial=12),
        PopulationSelection(targets_mmacs=((LO + (HI - LO) * 0.2) / 1e6,), per_target=3, tolerance_mmacs=0.3),
    ],
    ids=lambda s: s.name,
)
def test_every_strategy_picks_only_subnets_within_the_mac_limit(strategy):
    chosen = select_subnets(SPACE, 10, strategy, 4, seed=0, constraint=LIMIT).subnets
    unconstrained = select_subnets(SPACE, 10, strategy, 4, seed=0).subnets
    assert len(chosen) >= 3 and all(macs(c) <= LIMIT.max_macs for c in chosen)
    assert any(macs(c) > LIMIT.max_macs for c in unconstrained)  # the limit did something
    assert SPACE.largest() not in chosen


def test_spread_under_a_limit_reaches_up_to_the_limit():
    chosen = select_subnets(SPACE, 10, SpreadSelection(), 4, seed=0, constraint=LIMIT).subnets
    top = max(macs(c) for c in chosen)
    assert LIMIT.max_macs - (LIMIT.max_macs - LO) / 5 < top <= LIMIT.max_macs
    assert SPACE.smallest() in chosen and len(chosen) == 6  # the smallest, four targets and one on the limit


def test_buckets_under_a_limit_split_the_range_up_to_it():
    selection = select_subnets(SPACE, 10, BucketSelection(buckets=4, per_bucket=1), 0, 0, LIMIT)
    edges = selection.details["bucket_edges_mmacs"]
    assert edges[0] == pytest.approx(LO / 1e6, abs=1e-4) and edges[-1] == pytest.approx(LIMIT.max_macs / 1e6, abs=1e-4)
    assert selection.details["found_per_bucket"] == [1, 1, 1, 1]


def test_a_limit_no_subnet_meets_or_a_target_above_it_is_refused_naming_the_field(tiny_spec):
    with pytest.raises(SelectionError, match=r"^evaluation\.constraint\.max_macs: .* below the smallest subnet"):
        select_subnets(SPACE, 10, SpreadSelection(), 4, 0, SubnetConstraint(max_macs=LO - 1))
    target = PopulationSelection(targets_mmacs=(HI / 1e6 * 0.9,))
    with pytest.raises(SelectionError, match=r"targets_mmacs\[0\]: .* is above evaluation\.constraint\.max_macs"):
        select_subnets(SPACE, 10, target, 4, 0, LIMIT)
    path = tiny_spec("too-small", evaluation={"constraint": {"max_macs": LO - 1}})
    with pytest.raises(UserError, match=r"^evaluation\.constraint\.max_macs"):
        make_plan(load_spec(path))


def test_a_latency_limit_needs_latency_measured(tiny_spec):
    path = tiny_spec("no-timing", evaluation={"latency": {"enabled": False}, "constraint": {"max_latency_ms": 5}})
    message = r"no-timing\.yaml: evaluation: constraint\.max_latency_ms needs latency\.enabled"
    with pytest.raises(UserError, match=message) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_children_are_bred_only_within_the_limit():
    search = EvolutionarySearch(SPACE, EvolutionSelection(mutations=20, crossovers=20, parents=8), seed=0)
    start = select_subnets(SPACE, 10, EvolutionSelection(initial=12), 0, 0).subnets
    scored = [Scored(c, macs(c), random.Random(i).random()) for i, c in enumerate(start)]
    free = search.offspring(1, scored, [c.subnet_id for c in start])
    children = search.offspring(1, scored, [c.subnet_id for c in start], lambda c: macs(c) <= LIMIT.max_macs)
    assert len(children) == 40 and all(macs(c) <= LIMIT.max_macs for c in children)
    assert any(macs(c) > LIMIT.max_macs for c in free)
    again = search.offspring(1, scored, [c.subnet_id for c in start], lambda c: macs(c) <= LIMIT.max_macs)
    assert again == children  # a resumed search breeds the same children


def test_the_best_subnet_is_the_most_accurate_one_the_constraint_admits():
    rows = [
        {"subnet_id": "a", "macs": 100, "top1": 70.0, "latency_ms": 2.0},
        {"subnet_id": "b", "macs": 200, "top1": 80.0, "latency_ms": 4.0},
        {"subnet_id": "c", "macs": 150, "top1": 80.0, "latency_ms": 3.0},
        {"subnet_id": "d", "macs": 90, "top1": 60.0, "latency_ms": None},
    ]
    assert best_subnet(rows, SubnetConstraint())["subnet_id"] == "c"  # a tie goes to fewer MACs
    assert best_subnet(rows, SubnetConstraint(max_macs=149))["subnet_id"] == "a"
    assert best_subnet(rows, SubnetConstraint(max_latency_ms=2.5))["subnet_id"] == "a"  # d was never timed
    assert best_subnet(rows, SubnetConstraint(max_macs=95))["subnet_id"] == "d"
    assert best_subnet(rows, SubnetConstraint(max_macs=50)) is None
    assert SubnetConstraint(max_macs=1.5e8, max_latency_ms=20).describe() == "MACs <= 150M, latency <= 20 ms"


def test_latency_is_the_median_of_the_timed_calls_after_the_warmup():
    calls = []

    class Model(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x

    ticks = count()
    durations = iter([0.004, 0.001, 0.003, 0.100, 0.002])  # one outlier among five timed calls
    now = [0.0]

    def clock():
        if next(ticks) % 2 == 1:  # the call's end
            now[0] += next(durations)
        return now[0]

    assert median_ms(Model(), torch.zeros(2, 3, 4, 4), warmup=3, repeats=5, clock=clock) == pytest.approx(3.0)
    assert calls == [2] * 8


def test_a_measured_latency_says_where_and_at_which_batches():
    torch.manual_seed(0)
    net = ElasticSupernet(SPACE, 10).eval()
    net.set_active_subnet(SPACE.smallest())
    latency = measure_latency(net.get_active_subnet(), 16, torch.device("cpu"), LatencySpec(batch_size=4, repeats=3))
    assert latency.ms > 0 and latency.batch_ms > 0 and latency.batch_size == 4 and latency.seconds > 0
    assert latency.threads == torch.get_num_threads() and latency.device
    assert set(latency.columns()) == {
        "latency_ms",
        "latency_batch_size",
        "batch_latency_ms",
        "latency_device",
        "latency_threads",
    }


def test_the_lookup_table_has_every_block_choice_and_predicts_the_sum_of_a_subnets_parts(tmp_path):
    torch.manual_seed(0)
    net = ElasticSupernet(SPACE, 10)
    table = LatencyTable.measure(net, SPACE, torch.device("cpu"), warmup=0, repeats=1)
    blocks = sum(layout.max_depth for layout in SPACE.stages)
    choices = len(SPACE.kernel_choices) * len(SPACE.expand_choices)
    assert len(table.entries) == blocks * choices + 1  # and the fixed parts
    config = SPACE.smallest()
    parts = [table.entries[("fixed", 16, 0, 0.0)]] + [
        table.entries[(f"s{s}b{b}", 16, k, float(e))]
        for s, stage in enumerate(config.stages)
        for b, (k, e) in enumerate(zip(stage.kernels, stage.expands))
    ]
    assert table.predict(config) == pytest.approx(sum(parts))
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").predict(config) == pytest.approx(table.predict(config))
    error = prediction_error(table, net, SPACE, torch.device("cpu"), subnets=3, warmup=0, repeats=1)
    assert error.subnets == 3 and error.mean_abs_pct >= 0 and len(error.pairs) == 3
