"""DepS: full-model warmup, then sandwich sampling with ε-shrinking and in-place KD (IKD-warmup)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from workers.methods.base import DistillingConfig, DistillingMethod, SubnetStep, Target


class DepSConfig(DistillingConfig):
    name: Literal["deps"] = "deps"
    epochs: int = Field(200, gt=0)
    warmup_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    eps_start: float = Field(1e-4, gt=0.0, le=1.0)
    eps_ramp_epochs: float = Field(5.0, ge=0.0)
    subnets_per_step: int = Field(4, ge=2)

    @model_validator(mode="after")
    def _has_shrinking(self) -> DepSConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_fraction {self.warmup_fraction} leaves no shrinking epoch of {self.epochs}")
        return self

    @property
    def warmup_epochs(self) -> int:
        return round(self.epochs * self.warmup_fraction)


class DepS(DistillingMethod):
    name = "deps"
    config_model = DepSConfig
    config: DepSConfig

    def phase(self, epoch: int) -> str:
        return "warmup" if epoch < self.config.warmup_epochs else "shrinking"

    def epsilon(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """ε rises linearly per batch from eps_start to 1 over eps_ramp_epochs, then holds."""
        cfg = self.config
        if epoch < cfg.warmup_epochs:
            return 0.0
        ramp_steps = cfg.eps_ramp_epochs * steps_per_epoch
        done = (epoch - cfg.warmup_epochs) * steps_per_epoch + step
        if ramp_steps <= 0 or done >= ramp_steps:
            return 1.0
        return cfg.eps_start + (1.0 - cfg.eps_start) * done / ramp_steps

    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        full = SubnetStep(self.space.largest(), Target.LABELS, 1.0, dropout=True, is_teacher=True)
        if self.phase(epoch) == "warmup":
            return [full]
        eps = self.epsilon(epoch, step, steps_per_epoch)
        students = [self.space.smallest()] + [self.space.sample(rng) for _ in range(self.config.subnets_per_step - 2)]
        return [full] + [SubnetStep(c, Target.INPLACE_KD, eps, dropout=False) for c in students]

    def scalars(self, epoch: int, step: int, steps_per_epoch: int) -> dict[str, float]:
        return {"epsilon": self.epsilon(epoch, step, steps_per_epoch)}
