"""Evolutionary search over a trained supernet (the AlphaNet / AttentiveNAS protocol), as pure functions.

A random initial population is evaluated first (`workers/selection.py`); then every
round breeds `mutations` children (each gene resampled with `mutation_prob`) and
`crossovers` children (each gene from either parent) from the best `parents`
subnets evaluated so far. "Best" is Pareto-aware: subnets are ranked by their
Pareto layer over (MACs lower, top-1 higher), then by top-1, so parents come from
the whole MAC range instead of crowding at the largest subnets.

Nothing here evaluates anything: the evaluation stage hands in what it measured and
evaluates the children. Each round's children follow only from the seed, the round
and the subnets evaluated before it, so a resumed search proposes the same children.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from workers.selection import EvolutionSelection
from workers.supernet.space import SearchSpace, StageConfig, SubnetConfig

ATTEMPTS_PER_CHILD = 50  # draws per wanted child before a round gives up (the space may be nearly exhausted)


@dataclass(frozen=True)
class Scored:
    """An evaluated subnet."""

    config: SubnetConfig
    macs: int
    top1: float


@dataclass(frozen=True)
class _StageGenes:
    depth: int
    kernels: tuple[int, ...]  # one per block position up to the stage's maximum depth
    expands: tuple[float, ...]
    elastic: bool  # False: the stage's depth is fixed and its depth gene never changes


def pareto_layers(points: Sequence[tuple[float, float]]) -> list[int]:
    """The non-dominated-sorting layer of each (macs, top1) point; layer 0 is the Pareto front.

    A point dominates another with no more MACs and no less top-1 (and is not equal to it). O(n log n).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    neg_best: list[float] = []  # per layer, minus the best top-1 assigned so far (non-decreasing)
    layers = [0] * len(points)
    for i in order:
        top1 = points[i][1]
        layer = bisect.bisect_right(neg_best, -top1)
        if layer == len(neg_best):
            neg_best.append(-top1)
        else:
            neg_best[layer] = -top1
        layers[i] = layer
    return layers


class EvolutionarySearch:
    def __init__(self, space: SearchSpace, config: EvolutionSelection, seed: int) -> None:
        self.space, self.config, self.seed = space, config, seed

    def parents(self, scored: Sequence[Scored]) -> list[Scored]:
        """The `parents` best subnets: lowest Pareto layer first, then highest top-1."""
        layers = pareto_layers([(s.macs, s.top1) for s in scored])
        ranked = sorted(
            range(len(scored)),
            key=lambda i: (layers[i], -scored[i].top1, scored[i].macs, scored[i].config.subnet_id),
        )
        return [scored[i] for i in ranked[: self.config.parents]]

    def _genes(self, config: SubnetConfig, rng: random.Random) -> list[_StageGenes]:
        """A config as fixed-length genes; positions past a stage's depth get random (unused) values."""
        genes = []
        for layout, stage in zip(self.space.stages, config.stages):
            pad = layout.max_depth - stage.depth
            kernels = stage.kernels + tuple(rng.choice(self.space.kernel_choices) for _ in range(pad))
            expands = stage.expands + tuple(rng.choice(self.space.expand_choices) for _ in range(pad))
            genes.append(_StageGenes(stage.depth, kernels, expands, layout.elastic_depth))
        return genes

    def _decode(self, genes: Iterable[_StageGenes], resolution: int) -> SubnetConfig:
        stages = []
        for g in genes:
            expands = g.expands[: g.depth]
            if self.space.depth_expand_coupling is not None and g.elastic:
                expands = (self.space.depth_expand_coupling[g.depth],) * g.depth
            stages.append(StageConfig(g.kernels[: g.depth], expands))
        return SubnetConfig(tuple(stages), resolution)

    def mutate(self, config: SubnetConfig, rng: random.Random) -> SubnetConfig:
        """Every gene (stage depth, block kernel, block expand ratio) resampled with probability `mutation_prob`."""
        p, space = self.config.mutation_prob, self.space

        def maybe(value, choices):
            return rng.choice(choices) if rng.random() < p else value

        genes = [
            _StageGenes(
                maybe(g.depth, space.depth_choices) if g.elastic else g.depth,
                tuple(maybe(k, space.kernel_choices) for k in g.kernels),
                tuple(maybe(e, space.expand_choices) for e in g.expands),
                g.elastic,
            )
            for g in self._genes(config, rng)
        ]
        # Drawn only in an elastic-resolution space: a fixed one keeps the random stream it always had.
        resolution = maybe(config.resolution, space.resolutions) if len(space.resolutions) > 1 else config.resolution
        return self._decode(genes, resolution)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: random.Random) -> SubnetConfig:
        """Every gene taken from either parent with equal probability."""

        def either(x, y):
            return x if rng.random() < 0.5 else y

        genes = [
            _StageGenes(
                either(ga.depth, gb.depth),
                tuple(either(x, y) for x, y in zip(ga.kernels, gb.kernels)),
                tuple(either(x, y) for x, y in zip(ga.expands, gb.expands)),
                ga.elastic,
            )
            for ga, gb in zip(self._genes(a, rng), self._genes(b, rng))
        ]
        return self._decode(genes, either(a.resolution, b.resolution) if a.resolution != b.resolution else a.resolution)

    def offspring(
        self,
        round_index: int,
        scored: Sequence[Scored],
        known: Iterable[str],
        admits: Callable[[SubnetConfig], bool] | None = None,
    ) -> list[SubnetConfig]:
        """Round `round_index` (from 1): new children of the best parents, none of them already in `known`,
        each one `admits` (a constraint's MAC limit): a child outside it is bred again."""
        rng = random.Random(self.seed * 1_000_003 + round_index)
        parents = [s.config for s in self.parents(scored)]
        if not parents:
            return []
        seen = set(known)
        children: list[SubnetConfig] = []

        def breed(count: int, make) -> None:
            made = 0
            for _ in range(count * ATTEMPTS_PER_CHILD):
                if made >= count:
                    return
                child = make()
                if child.subnet_id not in seen and (admits is None or admits(child)):
                    seen.add(child.subnet_id)
                    children.append(child)
                    made += 1

        breed(self.config.mutations, lambda: self.mutate(rng.choice(parents), rng))
        if len(parents) >= 2:
            breed(self.config.crossovers, lambda: self.crossover(*rng.sample(parents, 2), rng))
        return children
