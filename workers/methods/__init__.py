"""Training methods, looked up by the name a job spec gives."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from workers.methods.base import MethodConfig, SubnetStep, Target, TrainingMethod
from workers.methods.deps import DepS

METHODS: dict[str, type[TrainingMethod]] = {m.name: m for m in (DepS,)}

# The spec's `method` field: a union of every registered method's config, told apart by `name`.
AnyMethodConfig = Annotated[Union[tuple(m.config_model for m in METHODS.values())], Field(discriminator="name")]


def build_method(config: MethodConfig, space) -> TrainingMethod:
    return METHODS[config.name](config, space)


__all__ = ["METHODS", "AnyMethodConfig", "MethodConfig", "SubnetStep", "Target", "TrainingMethod", "build_method"]
