"""What a method's students distil by: the divergence from the teacher's outputs (KL or AlphaNet's adaptive
α-divergence, a `teacher_divergence` spec key) and the softmax temperature.

Plain settings, apart from the losses of `workers/distillation.py` that they build, so a job spec is checked
without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KLConfig(_LossConfig):
    name: Literal["kl"] = "kl"


class AlphaDivergenceConfig(_LossConfig):
    name: Literal["alpha_divergence"] = "alpha_divergence"
    alpha_min: float = Field(-1.0, description="α₋, penalises a student over-estimating the teacher's uncertainty")
    alpha_max: float = Field(1.0, description="α₊, penalises a student under-estimating it")
    clip: float = Field(5.0, gt=0.0, description="β: the importance ratio (p/q)^α is clipped at this in the gradient")

    @model_validator(mode="after")
    def _ordered(self) -> AlphaDivergenceConfig:
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min {self.alpha_min} is above alpha_max {self.alpha_max}")
        return self


def _name_only(value: Any) -> Any:
    """`teacher_divergence: kl` is short for `teacher_divergence: {name: kl}`."""
    return {"name": value} if isinstance(value, str) else value


DivergenceConfig = Annotated[
    Union[KLConfig, AlphaDivergenceConfig], Field(discriminator="name"), BeforeValidator(_name_only)
]


@dataclass(frozen=True)
class Distillation:
    """A method's choice: which divergence, at which temperature (the loss is scaled by T²)."""

    divergence: KLConfig | AlphaDivergenceConfig = KLConfig()
    temperature: float = 1.0
