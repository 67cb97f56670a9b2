"""Subnet selection strategies and FLOP buckets: what each strategy picks, and where a MAC count falls."""

import random

import pytest
import yaml

from orchestrator.errors import UserError
from orchestrator.plan import make_plan
from orchestrator.spec_file import load_spec
from workers.selection import (
    BucketSelection,
    EvolutionSelection,
    FlopBuckets,
    PopulationSelection,
    RandomSelection,
    SpreadSelection,
    mac_range,
    sample_at_scale,
    select_subnets,
)
from workers.supernet.profile import profile_subnet
from workers.supernet.space import mobilenetv3_space, proxyless_space

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)
COMPOFA = mobilenetv3_space(
    0.35, cifar=True, resolution=16, kernel_choices=(7,), depth_expand_coupling={2: 3.0, 3: 4.0, 4: 6.0}
)


def macs(config, space=SPACE) -> int:
    return profile_subnet(space, config, 10).macs


def test_bucket_edges_split_the_range_uniformly():
    assert FlopBuckets(100, 700, 6).edges == [100, 200, 300, 400, 500, 600, 700]
    assert FlopBuckets(0, 10, 3).edges == pytest.approx([0, 10 / 3, 20 / 3, 10])
    assert FlopBuckets(100, 700, 6).bounds(2) == (300, 400)


@pytest.mark.parametrize(
    "value,bucket",
    [(100, 0), (199, 0), (200, 1), (399, 2), (400, 3), (600, 5), (699, 5), (700, 5), (99, None), (701, None)],
)
def test_a_subnet_on_an_edge_belongs_to_the_upper_bucket_and_the_largest_to_the_last(value, bucket):
    assert FlopBuckets(100, 700, 6).index(value) == bucket


def test_every_integer_mac_count_falls_inside_its_buckets_bounds():
    buckets = FlopBuckets(1_841_664, 9_953_664, 7)  # edges fall between integers
    for value in range(buckets.lo, buckets.hi + 1, 997):
        b = buckets.index(value)
        lo, hi = buckets.bounds(b)
        assert lo <= value < hi or (b == buckets.count - 1 and value == buckets.hi)
    assert FlopBuckets(5, 5, 6).index(5) == 0  # a single-subnet space: one bucket holds it


def test_buckets_strategy_fills_every_bucket_with_subnets_that_belong_there():
    selection = select_subnets(SPACE, 10, BucketSelection(buckets=6, per_bucket=3), 6, seed=1)
    buckets = FlopBuckets(*mac_range(SPACE, 10), 6)
    counts = [0] * 6
    for config in selection.subnets:
        SPACE.validate(config)
        counts[buckets.index(macs(config))] += 1
    assert counts == [3] * 6 == selection.details["found_per_bucket"]
    ids = [c.subnet_id for c in selection.subnets]
    assert len(set(ids)) == len(ids) == 18
    assert {SPACE.smallest().subnet_id, SPACE.largest().subnet_id} <= set(ids)  # they count towards buckets 1 and 6
    again = select_subnets(SPACE, 10, BucketSelection(buckets=6, per_bucket=3), 6, seed=1)
    assert [c.subnet_id for c in again.subnets] == ids  # a plan is reproducible
    assert selection.details["bucket_edges_mmacs"] == pytest.approx([e / 1e6 for e in buckets.edges], abs=1e-4)


def test_uniform_sampling_misses_the_top_of_the_range_but_the_scaled_sampler_covers_it():
    lo, hi = mac_range(SPACE, 10)
    rng = random.Random(0)
    uniform = [macs(SPACE.sample(rng)) for _ in range(500)]
    scaled = [macs(sample_at_scale(SPACE, rng, rng.random())) for _ in range(500)]
    top = lo + (hi - lo) * 5 / 6
    assert max(uniform) < top <= max(scaled)
    assert macs(sample_at_scale(SPACE, rng, 0.0)) < lo + (hi - lo) / 6


def test_populations_stay_within_tolerance_of_each_target():
    lo, hi = mac_range(SPACE, 10)
    targets = (round((lo + 0.2 * (hi - lo)) / 1e6, 3), round((lo + 0.8 * (hi - lo)) / 1e6, 3))
    strategy = PopulationSelection(targets_mmacs=targets, tolerance_mmacs=0.1, per_target=10, include_extremes=False)
    selection = select_subnets(SPACE, 10, strategy, 6, seed=0)
    assert selection.details["found_per_target"] == [10, 10] and len(selection.subnets) == 20
    near = [min(abs(macs(c) / 1e6 - t) for t in targets) for c in selection.subnets]
    assert max(near) <= 0.1
    # The runs of a comparison sharing the selection get the same subnets, each with details of its own.
    selection.details["found_per_target"].append(99)
    again = select_subnets(SPACE, 10, strategy, 6, seed=0)
    assert again.subnets == selection.subnets and again.details["found_per_target"] == [10, 10]
    other_seed = select_subnets(SPACE, 10, strategy, 6, seed=1)
    assert set(other_seed.subnets) != set(selection.subnets)


def test_a_target_outside_the_range_is_a_one_line_error_naming_the_field(tmp_path, tiny_spec):
    spec = load_spec(tiny_spec("pop", evaluation={"selection": {"name": "populations", "targets_mmacs": [3.0, 500.0]}}))
    with pytest.raises(UserError, match=r"^evaluation\.selection\.targets_mmacs\[1\]: 500.0 ± 0.5 MMACs is outside"):
        make_plan(spec)


def test_random_and_spread_and_the_evolutions_initial_population():
    chosen = select_subnets(SPACE, 10, RandomSelection(subnets=5), 6, seed=3).subnets
    assert len({c.subnet_id for c in chosen}) == 7 and chosen[0] == SPACE.smallest() and chosen[1] == SPACE.largest()
    assert len(select_subnets(SPACE, 10, RandomSelection(subnets=5, include_extremes=False), 6, 3).subnets) == 5
    assert len(select_subnets(SPACE, 10, SpreadSelection(), 4, seed=0).subnets) == 6
    evolution = select_subnets(SPACE, 10, EvolutionSelection(initial=20, rounds=3, mutations=4, crossovers=5), 6, 0)
    assert len(evolution.subnets) == 22 and evolution.details == {"initial": 22, "rounds": 3, "at_most": 22 + 27}


def test_a_small_space_is_exhausted_instead_of_searched_for_ever():
    # CompOFA's coupled space with one kernel has 3^5 = 243 subnets.
    chosen = select_subnets(COMPOFA, 10, RandomSelection(subnets=1000), 6, seed=0).subnets
    assert len(chosen) == 243
    for config in chosen:
        COMPOFA.validate(config)
        assert all(set(s.expands) == {float({2: 3, 3: 4, 4: 6}[s.depth])} for s in config.stages)


def test_scaled_sampling_keeps_a_fixed_depth_stage_fixed():
    space = proxyless_space(0.35, cifar=True, resolution=16)
    rng = random.Random(0)
    for _ in range(50):
        config = sample_at_scale(space, rng, rng.random())
        space.validate(config)
        assert config.stages[-1].depth == 1


def test_the_spec_names_the_strategy_and_rejects_unknown_keys(tmp_path):
    base = {"run": "x", "method": {"name": "deps"}}

    def load(evaluation):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, "evaluation": evaluation}))
        return load_spec(path)

    assert load({"selection": "buckets"}).evaluation.selection == BucketSelection()
    assert load({"selection": {"name": "evolution", "rounds": 3}}).evaluation.selection.rounds == 3
    assert load({}).evaluation.selection == SpreadSelection()
    for evaluation, message in [
        ({"selection": {"buckets": 3}}, r"evaluation\.selection: name is missing; it names the strategy, one of"),
        ({"selection": {"name": "bucket"}}, r"evaluation\.selection\.name: unknown 'bucket'; allowed: 'spread'"),
        ({"selection": {"name": "buckets", "per_buckit": 2}}, r"evaluation\.selection\.per_buckit: unknown field"),
        ({"selection": {"name": "evolution", "mutation_prob": 0}}, r"mutation_prob: Input should be greater than 0"),
    ]:
        with pytest.raises(UserError, match=message) as info:
            load(evaluation)
        assert "\n" not in str(info.value)


def test_the_plan_shows_the_strategy_and_how_well_it_met_the_request(tiny_spec):
    spec = load_spec(tiny_spec("plan", evaluation={"selection": {"name": "buckets", "buckets": 4, "per_bucket": 2}}))
    plan = make_plan(spec)
    described = plan.describe()["evaluation"]
    assert described["selection"]["name"] == "buckets" and described["selection"]["found_per_bucket"] == [2, 2, 2, 2]
    assert described["subnets"] == len(plan.subnets) == 8
