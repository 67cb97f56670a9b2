"""The evolutionary search's pure parts: Pareto layers, parents, mutation, crossover, reproducible rounds.

The search on a real trained supernet is in tests/test_evaluation.py.
"""

import random

from workers.search import EvolutionarySearch, Scored, pareto_layers
from workers.selection import EvolutionSelection, random_subnets
from workers.supernet.profile import profile_subnet
from workers.supernet.space import mobilenetv3_space, proxyless_space

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)


def test_pareto_layers_by_hand():
    # (MACs, top-1): a, b, c form the front; d is beaten by b only; e by d (and b); f equals c.
    points = [(1, 50.0), (2, 70.0), (4, 80.0), (3, 60.0), (5, 55.0), (4, 80.0)]
    assert pareto_layers(points) == [0, 0, 0, 1, 2, 1]
    assert pareto_layers([]) == []


def test_parents_are_the_lowest_layers_then_the_most_accurate():
    configs = random_subnets(SPACE, 6, seed=0, include_extremes=False)
    scored = [
        Scored(c, m, t) for c, (m, t) in zip(configs, [(1, 50.0), (2, 70.0), (4, 80.0), (3, 60.0), (5, 55.0), (6, 1)])
    ]
    search = EvolutionarySearch(SPACE, EvolutionSelection(parents=4), seed=0)
    assert [s.top1 for s in search.parents(scored)] == [80.0, 70.0, 50.0, 60.0]


def test_mutation_changes_genes_at_the_set_rate_and_stays_in_the_space():
    rng = random.Random(0)
    parent = SPACE.largest()
    changed = []
    for p in (0.05, 0.5):
        search = EvolutionarySearch(SPACE, EvolutionSelection(mutation_prob=p), seed=0)
        children = [search.mutate(parent, rng) for _ in range(200)]
        for child in children:
            SPACE.validate(child)
        changed.append(sum(c != parent for c in children) / len(children))
    assert 0.3 < changed[0] < changed[1]  # 45 genes: even at 5 % most children differ somewhere
    assert EvolutionarySearch(SPACE, EvolutionSelection(mutation_prob=1.0), 0).mutate(parent, rng) != parent


def test_crossover_takes_every_gene_from_one_parent_or_the_other():
    rng = random.Random(1)
    search = EvolutionarySearch(SPACE, EvolutionSelection(), seed=0)
    a, b = SPACE.smallest(), SPACE.largest()
    assert search.crossover(a, a, rng) == a
    for _ in range(50):
        child = search.crossover(a, b, rng)
        SPACE.validate(child)
        for stage in child.stages:  # blocks both parents have; deeper ones have no gene in the smaller parent
            assert set(stage.kernels[:2]) <= {3, 7} and set(stage.expands[:2]) <= {3.0, 6.0}


def test_search_respects_fixed_depth_stages_and_coupled_expand_ratios():
    proxyless = proxyless_space(0.35, cifar=True, resolution=16)
    compofa = mobilenetv3_space(0.35, cifar=True, resolution=16, depth_expand_coupling={2: 3.0, 3: 4.0, 4: 6.0})
    rng = random.Random(0)
    for space in (proxyless, compofa):
        search = EvolutionarySearch(space, EvolutionSelection(mutation_prob=0.5), seed=0)
        for _ in range(30):
            child = search.crossover(search.mutate(space.sample(rng), rng), space.sample(rng), rng)
            space.validate(child)
            if space is proxyless:
                assert child.stages[-1].depth == 1
            else:
                assert all(set(s.expands) == {float({2: 3, 3: 4, 4: 6}[s.depth])} for s in child.stages)


def test_offspring_are_new_reproducible_and_differ_between_rounds():
    config = EvolutionSelection(initial=30, mutations=12, crossovers=9, parents=10)
    initial = random_subnets(SPACE, 30, seed=0)
    rng = random.Random(0)
    scored = [Scored(c, profile_subnet(SPACE, c, 10).macs, rng.uniform(10, 90)) for c in initial]
    known = [s.config.subnet_id for s in scored]
    search = EvolutionarySearch(SPACE, config, seed=5)
    children = search.offspring(1, scored, known)
    ids = [c.subnet_id for c in children]
    assert len(ids) == len(set(ids)) == 21 and not set(ids) & set(known)
    # The same inputs give the same children, whatever order the rows come in: a resumed search repeats itself.
    assert [c.subnet_id for c in search.offspring(1, list(reversed(scored)), known)] == ids
    assert [c.subnet_id for c in search.offspring(2, scored, known)] != ids


def test_a_nearly_exhausted_space_yields_fewer_children_instead_of_hanging():
    tiny = mobilenetv3_space(
        0.35, cifar=True, resolution=16, kernel_choices=(7,), expand_choices=(3,), depth_choices=(2, 3)
    )  # 2^5 = 32 subnets
    everything = random_subnets(tiny, 100, seed=0)
    assert len(everything) == 32
    scored = [Scored(c, profile_subnet(tiny, c, 10).macs, 50.0) for c in everything[:30]]
    search = EvolutionarySearch(tiny, EvolutionSelection(mutations=8, crossovers=8, parents=8), seed=0)
    children = search.offspring(1, scored, [s.config.subnet_id for s in scored])
    assert {c.subnet_id for c in children} <= {c.subnet_id for c in everything[30:]}
