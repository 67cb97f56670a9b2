"""Training methods, looked up by the name a job spec gives."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from workers.methods.base import MethodConfig, Stage, SubnetStep, Target, TrainingMethod
from workers.methods.bignas import BigNAS
from workers.methods.deps import DepS
from workers.methods.progressive import OFA, CompOFA
from workers.methods.rss import RSS
from workers.supernet.space import SearchSpace

METHODS: dict[str, type[TrainingMethod]] = {m.name: m for m in (DepS, OFA, BigNAS, CompOFA, RSS)}

# The spec's `method` field: a union of every registered method's config, told apart by `name`.
AnyMethodConfig = Annotated[Union[tuple(m.config_model for m in METHODS.values())], Field(discriminator="name")]


def build_method(config: MethodConfig, space: SearchSpace, seed: int = 0) -> TrainingMethod:
    return METHODS[config.name](config, space, seed)


__all__ = [
    "METHODS",
    "AnyMethodConfig",
    "MethodConfig",
    "Stage",
    "SubnetStep",
    "Target",
    "TrainingMethod",
    "build_method",
]
