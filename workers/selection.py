"""Which subnets to evaluate: the selection strategies of the evaluation stage, and FLOP buckets.

Every strategy returns plain `SubnetConfig`s; the evaluation stage calibrates and
evaluates them with the same parallel workers. The evolutionary search also starts
here (its initial population) and continues in `workers/search.py`, driven round by
round by the evaluation stage because it needs accuracies as it goes.

Uniform sampling from the space concentrates in the middle of the MAC range (on the
OFA MobileNetV3 space not one of 5000 draws lands in the top third), so strategies
that must cover the whole range draw with `sample_at_scale`, which centres every
gene's choice on a random position `t` of its choice list.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from workers.constraint import SubnetConstraint
from workers.flop_buckets import FlopBuckets
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SearchSpace, StageConfig, SubnetConfig

# Draw limits: cheap (a draw plus its MAC count take about 60 µs) and enough to fill every bucket of the
# OFA spaces many times over; a strategy that still finds too few says so in the plan.
MAX_DRAWS = 200_000
MAX_STALE_DRAWS = 2_000  # consecutive draws of known subnets after which a small space counts as exhausted
SCALE_SPREAD = 0.5  # standard deviation, in choice-list positions, of `sample_at_scale`
UNCONSTRAINED = SubnetConstraint()


class SelectionError(ValueError):
    """A selection setting that cannot work for this supernet; the message names the field."""


class _Selection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpreadSelection(_Selection):
    """The smallest, the largest, and `evaluation.subnets` subnets closest to evenly spaced MAC targets."""

    name: Literal["spread"] = "spread"


class RandomSelection(_Selection):
    """`subnets` subnets drawn uniformly from the space (plus the smallest and the largest)."""

    name: Literal["random"] = "random"
    subnets: int = Field(32, ge=1)
    include_extremes: bool = True


class BucketSelection(_Selection):
    """The DepS protocol: the MAC range split uniformly into `buckets`, `per_bucket` subnets drawn in each."""

    name: Literal["buckets"] = "buckets"
    buckets: int = Field(6, ge=1)
    per_bucket: int = Field(4, ge=1)
    include_extremes: bool = True


class PopulationSelection(_Selection):
    """The RSS protocol: `per_target` subnets within ± `tolerance_mmacs` of each MAC target."""

    name: Literal["populations"] = "populations"
    targets_mmacs: tuple[float, ...] = Field(min_length=1)
    tolerance_mmacs: float = Field(0.5, gt=0.0)
    per_target: int = Field(100, ge=1)
    include_extremes: bool = True

    @field_validator("targets_mmacs")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(t <= 0 for t in value):
            raise ValueError("targets must be positive MMACs")
        return value


class EvolutionSelection(_Selection):
    """The AlphaNet/AttentiveNAS protocol: a random population, then rounds of mutation and crossover."""

    name: Literal["evolution"] = "evolution"
    initial: int = Field(512, ge=2, description="random subnets evaluated first")
    rounds: int = Field(20, ge=0)
    mutations: int = Field(128, ge=0, description="children by mutation per round")
    crossovers: int = Field(128, ge=0, description="children by crossover per round")
    parents: int = Field(128, ge=2, description="best subnets (by Pareto layer, then top-1) that breed")
    mutation_prob: float = Field(0.2, gt=0.0, le=1.0, description="per-gene probability of a mutation")
    include_extremes: bool = True


SELECTION_NAMES = ("spread", "random", "buckets", "populations", "evolution")


def _named(value: Any) -> Any:
    """`selection: buckets` is short for `selection: {name: buckets}`; a mapping must name its strategy."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and "name" not in value:
        raise ValueError(f"name is missing; it names the strategy, one of {', '.join(SELECTION_NAMES)}")
    return value


AnySelection = Annotated[
    Union[SpreadSelection, RandomSelection, BucketSelection, PopulationSelection, EvolutionSelection],
    Field(discriminator="name"),
    BeforeValidator(_named),
]


@dataclass(frozen=True)
class Candidate:
    config: SubnetConfig
    macs: int


class _Profiler:
    """MAC counts of configs, memoised by subnet id."""

    def __init__(self, space: SearchSpace, num_classes: int) -> None:
        self.space, self.num_classes, self._macs = space, num_classes, {}

    def __call__(self, config: SubnetConfig) -> Candidate:
        key = config.subnet_id
        if key not in self._macs:
            self._macs[key] = profile_subnet(self.space, config, self.num_classes).macs
        return Candidate(config, self._macs[key])


def mac_range(space: SearchSpace, num_classes: int) -> tuple[int, int]:
    return (
        profile_subnet(space, space.smallest(), num_classes).macs,
        profile_subnet(space, space.largest(), num_classes).macs,
    )


def constrained_buckets(space: SearchSpace, num_classes: int, count: int, constraint: SubnetConstraint) -> FlopBuckets:
    """`count` FLOP buckets over the supernet's MAC range, cut at the constraint's MAC limit."""
    lo, hi = mac_range(space, num_classes)
    if constraint.max_macs is not None:
        if constraint.max_macs < lo:
            raise SelectionError(
                f"evaluation.constraint.max_macs: {constraint.max_macs:g} is below the smallest subnet's {lo} MACs"
            )
        hi = min(hi, int(constraint.max_macs))
    return FlopBuckets(lo, hi, count)


def _pick(rng: random.Random, choices: tuple, t: float) -> object:
    centre = t * (len(choices) - 1)
    weights = [math.exp(-((i - centre) ** 2) / (2 * SCALE_SPREAD**2)) for i in range(len(choices))]
    return rng.choices(choices, weights)[0]


def sample_at_scale(space: SearchSpace, rng: random.Random, t: float) -> SubnetConfig:
    """A random subnet whose every choice sits near position `t` in [0, 1] of its sorted choice list.

    t = 0 gives (nearly always) the smallest subnet, t = 1 the largest; t drawn uniformly covers the MAC range.
    """
    stages = []
    for layout in space.stages:
        depth = _pick(rng, space.depth_choices, t) if layout.elastic_depth else layout.max_depth
        kernels = tuple(_pick(rng, space.kernel_choices, t) for _ in range(depth))
        if space.depth_expand_coupling is not None and layout.elastic_depth:
            expands = (space.depth_expand_coupling[depth],) * depth
        else:
            expands = tuple(_pick(rng, space.expand_choices, t) for _ in range(depth))
        stages.append(StageConfig(kernels, expands))
    resolution = _pick(rng, space.resolutions, t) if len(space.resolutions) > 1 else space.resolution
    return SubnetConfig(tuple(stages), resolution)


def _extremes(space: SearchSpace) -> dict[str, SubnetConfig]:
    smallest, largest = space.smallest(), space.largest()
    return {smallest.subnet_id: smallest, largest.subnet_id: largest}


def _unique_draws(draw: Callable[[], SubnetConfig], seen: set[str], limit: int) -> Iterator[SubnetConfig]:
    """New configs from `draw`, skipping ids in `seen` (which it extends).

    Stops after `limit` draws, or after MAX_STALE_DRAWS draws in a row found nothing new.
    """
    stale = 0
    for _ in range(limit):
        config = draw()
        if config.subnet_id in seen:
            stale += 1
            if stale >= MAX_STALE_DRAWS:
                return
            continue
        stale = 0
        seen.add(config.subnet_id)
        yield config


def spread_over_macs(
    space: SearchSpace,
    num_classes: int,
    count: int,
    seed: int,
    pool_size: int = 1000,
    constraint: SubnetConstraint = UNCONSTRAINED,
) -> list[SubnetConfig]:
    """Smallest, largest, and `count` random subnets whose MACs are closest to evenly spaced targets.

    Under a MAC limit the targets span the smallest to the limit, and the last sits on it in place of the largest.
    """
    profile = _Profiler(space, num_classes)
    chosen = {k: c for k, c in _extremes(space).items() if constraint.admits_macs(profile(c).macs)}
    lo, hi = mac_range(space, num_classes)
    capped = hi if constraint.max_macs is None else min(hi, constraint.max_macs)
    targets = [lo + (capped - lo) * i / (count + 1) for i in range(1, count + 1)]
    if space.largest().subnet_id not in chosen and capped >= lo:
        targets.append(capped)
    if not targets:
        return list(chosen.values())
    rng = random.Random(seed)
    pool = {}
    for _ in range(max(pool_size, 20 * len(targets))):
        config = space.sample(rng)
        if config.subnet_id not in pool:
            pool[config.subnet_id] = (profile(config).macs, config)
    candidates = [v for k, v in pool.items() if k not in chosen and constraint.admits_macs(v[0])]
    for target in targets:
        if not candidates:
            break
        best = min(range(len(candidates)), key=lambda j: abs(candidates[j][0] - target))
        config = candidates.pop(best)[1]
        chosen[config.subnet_id] = config
    return list(chosen.values())


def random_subnets(
    space: SearchSpace,
    count: int,
    seed: int,
    include_extremes: bool = True,
    admits: Callable[[SubnetConfig], bool] | None = None,
) -> list[SubnetConfig]:
    """`count` distinct subnets drawn uniformly from the space (of those `admits`), after the smallest and
    largest if asked (and admitted)."""
    chosen = _extremes(space) if include_extremes else {}
    if admits is not None:
        chosen = {k: c for k, c in chosen.items() if admits(c)}
    wanted = len(chosen) + count
    rng = random.Random(seed)
    seen = set(chosen)
    for config in _unique_draws(lambda: space.sample(rng), seen, MAX_DRAWS):
        if admits is not None and not admits(config):
            continue
        chosen[config.subnet_id] = config
        if len(chosen) >= wanted:
            break
    return list(chosen.values())


def bucket_subnets(
    space: SearchSpace,
    num_classes: int,
    config: BucketSelection,
    seed: int,
    constraint: SubnetConstraint = UNCONSTRAINED,
) -> tuple[list[SubnetConfig], list[int]]:
    """`per_bucket` subnets drawn at random in each FLOP bucket; returns them and how many each bucket got.

    The smallest and largest subnets (if included) count towards their buckets. Under a MAC limit the
    buckets split the range from the smallest to the limit.
    """
    profile = _Profiler(space, num_classes)
    buckets = constrained_buckets(space, num_classes, config.buckets, constraint)
    rng = random.Random(seed)
    chosen = _extremes(space) if config.include_extremes else {}
    chosen = {k: c for k, c in chosen.items() if buckets.index(profile(c).macs) is not None}
    counts = [0] * buckets.count
    for c in chosen.values():
        counts[buckets.index(profile(c).macs)] += 1
    seen = set(chosen)
    for c in _unique_draws(lambda: sample_at_scale(space, rng, rng.random()), seen, MAX_DRAWS):
        b = buckets.index(profile(c).macs)
        if b is not None and counts[b] < config.per_bucket:
            counts[b] += 1
            chosen[c.subnet_id] = c
            if min(counts) >= config.per_bucket:
                break
    return list(chosen.values()), counts


def population_subnets(
    space: SearchSpace,
    num_classes: int,
    config: PopulationSelection,
    seed: int,
    constraint: SubnetConstraint = UNCONSTRAINED,
) -> tuple[list[SubnetConfig], list[int]]:
    """Per target, `per_target` distinct subnets within ± tolerance; returns them and the count per target."""
    profile = _Profiler(space, num_classes)
    lo, hi = mac_range(space, num_classes)
    tol = config.tolerance_mmacs * 1e6
    for i, target in enumerate(config.targets_mmacs):
        if target * 1e6 + tol < lo or target * 1e6 - tol > hi:
            raise SelectionError(
                f"evaluation.selection.targets_mmacs[{i}]: {target} ± {config.tolerance_mmacs} MMACs is outside "
                f"the supernet's range {lo / 1e6:.3f}-{hi / 1e6:.3f} MMACs"
            )
        if not constraint.admits_macs(target * 1e6 - tol):
            raise SelectionError(
                f"evaluation.selection.targets_mmacs[{i}]: {target} ± {config.tolerance_mmacs} MMACs is above "
                f"evaluation.constraint.max_macs ({constraint.max_macs:g})"
            )
    rng = random.Random(seed)
    chosen = _extremes(space) if config.include_extremes else {}
    chosen = {k: c for k, c in chosen.items() if constraint.admits_macs(profile(c).macs)}
    counts = []
    for target in config.targets_mmacs:
        # Centre the sampler near the target's position in the range; the band is narrow, so most draws miss.
        where = 0.5 if hi == lo else min(1.0, max(0.0, (target * 1e6 - lo) / (hi - lo)))
        found = 0

        def draw(where: float = where) -> SubnetConfig:
            return sample_at_scale(space, rng, min(1.0, max(0.0, where + rng.uniform(-0.2, 0.2))))

        for c in _unique_draws(draw, set(chosen), MAX_DRAWS):
            if abs(profile(c).macs - target * 1e6) <= tol and constraint.admits_macs(profile(c).macs):
                chosen[c.subnet_id] = c
                found += 1
                if found >= config.per_target:
                    break
        counts.append(found)
    return list(chosen.values()), counts


@dataclass(frozen=True)
class Selection:
    """The subnets a strategy picked up front, and how well it met its request (for the plan)."""

    subnets: tuple[SubnetConfig, ...]
    details: dict


def select_subnets(
    space: SearchSpace,
    num_classes: int,
    strategy: _Selection,
    spread_count: int,
    seed: int,
    constraint: SubnetConstraint = UNCONSTRAINED,
) -> Selection:
    """The subnets to evaluate first. For `evolution` that is the initial population; rounds follow later.

    Only subnets within the constraint's MAC limit are picked; its latency limit is checked by the
    evaluation workers, who measure latency before they evaluate.

    A pure function of its arguments, kept for the process: the runs of a comparison that share a space and a
    selection (RSS's nine schemes, 500 subnets each found by rejection sampling) select once.
    """
    # a space's repr is its value (dicts included)
    key = (repr(space), num_classes, strategy, spread_count, seed, constraint)
    if key not in _SELECTED:
        if len(_SELECTED) >= 16:
            _SELECTED.pop(next(iter(_SELECTED)))
        _SELECTED[key] = _select(space, num_classes, strategy, spread_count, seed, constraint)
    chosen = _SELECTED[key]
    return Selection(chosen.subnets, copy.deepcopy(chosen.details))


_SELECTED: dict[tuple, Selection] = {}


def within_macs(space: SearchSpace, num_classes: int, constraint: SubnetConstraint) -> Callable[[SubnetConfig], bool]:
    """Whether a config is within the constraint's MAC limit (MACs counted once per config)."""
    profile = _Profiler(space, num_classes)
    return lambda config: constraint.admits_macs(profile(config).macs)


def _select(
    space: SearchSpace,
    num_classes: int,
    strategy: _Selection,
    spread_count: int,
    seed: int,
    constraint: SubnetConstraint,
) -> Selection:
    if constraint.max_macs is not None:
        constrained_buckets(space, num_classes, 1, constraint)  # a limit below every subnet is refused here
    admits = within_macs(space, num_classes, constraint) if constraint.max_macs is not None else None
    if isinstance(strategy, SpreadSelection):
        subnets = spread_over_macs(space, num_classes, spread_count, seed, constraint=constraint)
        return Selection(tuple(subnets), {"subnets": len(subnets)})
    if isinstance(strategy, RandomSelection):
        subnets = random_subnets(space, strategy.subnets, seed, strategy.include_extremes, admits)
        return Selection(tuple(subnets), {"subnets": len(subnets)})
    if isinstance(strategy, BucketSelection):
        subnets, counts = bucket_subnets(space, num_classes, strategy, seed, constraint)
        edges = constrained_buckets(space, num_classes, strategy.buckets, constraint).edges
        return Selection(
            tuple(subnets),
            {
                "subnets": len(subnets),
                "bucket_edges_mmacs": [round(e / 1e6, 4) for e in edges],
                "found_per_bucket": counts,
            },
        )
    if isinstance(strategy, PopulationSelection):
        subnets, counts = population_subnets(space, num_classes, strategy, seed, constraint)
        return Selection(tuple(subnets), {"subnets": len(subnets), "found_per_target": counts})
    if isinstance(strategy, EvolutionSelection):
        subnets = random_subnets(space, strategy.initial, seed, strategy.include_extremes, admits)
        most = len(subnets) + strategy.rounds * (strategy.mutations + strategy.crossovers)
        return Selection(tuple(subnets), {"initial": len(subnets), "rounds": strategy.rounds, "at_most": most})
    raise TypeError(f"unknown selection strategy {strategy!r}")
