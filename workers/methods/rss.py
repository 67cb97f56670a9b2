"""RSS, random subnet sampling (the interference study): subnets train alone, with labels only.

- `sampling: per_epoch` (RSS): one subnet is drawn per epoch and trains alone for
  the whole epoch. `per_batch`: a new draw every minibatch.
- `subnets_per_step: 2`: two subnets per minibatch, gradients summed (weight 1 each).
- `selection`: `random` (uniform over the space), or a fixed scheme, one subnet
  per epoch: `smallest`, `middle`, `largest` (that subnet for every epoch),
  `max_then_min` (largest for the first half of the epochs, smallest for the
  rest), `min_then_max`, `alternating` (largest and smallest, one epoch each,
  largest first).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from workers.methods.base import MethodConfig, SubnetStep, Target, TrainingMethod
from workers.supernet.space import SubnetConfig

Selection = Literal["random", "smallest", "middle", "largest", "max_then_min", "min_then_max", "alternating"]


class RSSConfig(MethodConfig):
    name: Literal["rss"] = "rss"
    epochs: int = Field(180, gt=0, description="RSS 590, RSS-Short 180")
    selection: Selection = "random"
    sampling: Literal["per_epoch", "per_batch"] = "per_epoch"
    subnets_per_step: int = Field(1, ge=1, le=8, description="subnets per minibatch, gradients summed")

    @model_validator(mode="after")
    def _fixed_schemes_are_per_epoch(self) -> RSSConfig:
        if self.selection != "random" and (self.sampling != "per_epoch" or self.subnets_per_step != 1):
            raise ValueError(
                f"selection {self.selection!r} trains one fixed subnet per epoch: "
                "it needs sampling per_epoch and subnets_per_step 1"
            )
        return self

    def run_label(self) -> str:
        parts = ["rss", self.selection.replace("_", "-")]
        if self.sampling == "per_batch":
            parts.append("per-batch")
        if self.subnets_per_step > 1:
            parts.append(f"x{self.subnets_per_step}")
        return "-".join(parts)


class RSS(TrainingMethod):
    name = "rss"
    config_model = RSSConfig
    config: RSSConfig

    def _extreme(self, epoch: int) -> str:
        """'max' or 'min' for the two-subnet schemes."""
        sel, half = self.config.selection, self.config.epochs // 2
        if sel == "alternating":
            return "max" if epoch % 2 == 0 else "min"
        first, second = ("max", "min") if sel == "max_then_min" else ("min", "max")
        return first if epoch < half else second

    def phase(self, epoch: int) -> str:
        sel = self.config.selection
        if sel in ("max_then_min", "min_then_max", "alternating"):
            return self._extreme(epoch)
        return sel

    def epoch_subnets(self, epoch: int) -> list[SubnetConfig]:
        """The subnets every step of `epoch` trains, when they are chosen per epoch."""
        sel = self.config.selection
        if sel == "random":
            rng = random.Random(f"rss/{self.seed}/{epoch}")  # the same on every rank and every resume
            return [self.space.sample(rng) for _ in range(self.config.subnets_per_step)]
        if sel == "smallest":
            return [self.space.smallest()]
        if sel == "middle":
            return [self.space.middle()]
        if sel == "largest":
            return [self.space.largest()]
        return [self.space.largest() if self._extreme(epoch) == "max" else self.space.smallest()]

    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        if self.config.sampling == "per_batch":
            configs = [self.space.sample(rng) for _ in range(self.config.subnets_per_step)]
        else:
            configs = self.epoch_subnets(epoch)
        return [SubnetStep(c, Target.LABELS, 1.0, dropout=True) for c in configs]
