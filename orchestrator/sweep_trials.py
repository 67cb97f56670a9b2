"""A sweep's trials, as pure values: which spec values each trial sets, and its run name.

Grid parameters multiply (in the order given, the last varying fastest), the grid
repeated `num_samples` times; every trial draws the random distributions anew (as
Ray Tune does), from the spec's seed, so the same spec always names the same
trials and a sweep submitted again finds its trials' run directories.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.sweep_spec import Distribution, SweepSpec

MAX_NAME = 128


@dataclass(frozen=True)
class Trial:
    index: int
    values: dict[str, Any]  # dotted spec path: the value this trial sets
    name: str  # its run name: `<sweep>-t<index>-<path tail><value>...`


def _draw(distribution: Distribution, rng: random.Random) -> Any:
    if distribution.choice is not None:
        return rng.choice(distribution.choice)
    if distribution.uniform is not None:
        return rng.uniform(*distribution.uniform)
    assert distribution.loguniform is not None
    low, high = distribution.loguniform
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _label(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value))


def trial_name(sweep_run: str, index: int, values: dict[str, Any]) -> str:
    parts = [f"{path.rsplit('.', 1)[-1]}{_label(value)}" for path, value in values.items()]
    name = "-".join([f"{sweep_run}-t{index}", *parts])
    return name if len(name) <= MAX_NAME else f"{sweep_run}-t{index}"


def sweep_trials(sweep: SweepSpec, sweep_run: str, seed: int) -> list[Trial]:
    grid = {p: d.grid for p, d in sweep.parameters.items() if d.grid is not None}
    drawn = {p: d for p, d in sweep.parameters.items() if d.grid is None}
    trials: list[Trial] = []
    for sample in range(sweep.num_samples):
        rng = random.Random(seed * 1_000_003 + sample)
        for combination in itertools.product(*grid.values()) if grid else [()]:
            values = dict(zip(grid, combination)) | {p: _draw(d, rng) for p, d in drawn.items()}
            ordered = {p: values[p] for p in sweep.parameters}
            index = len(trials)
            trials.append(Trial(index, ordered, trial_name(sweep_run, index, ordered)))
    return trials


def with_values(data: dict, values: dict[str, Any]) -> dict:
    """A copy of a spec's data with each dotted path set (missing mappings on the way are created)."""
    out = copy.deepcopy(data)
    for path, value in values.items():
        node = out
        keys = path.split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return out
