"""BigNAS: sandwich sampling with in-place distillation from step 0.

- Every minibatch: the largest network (labels, dropout; the in-place teacher),
  the smallest, and k − 2 random subnets distilling from the largest's detached
  output with full gradient weight.
- The LR follows the cosine towards 0 but holds at `lr_constant_ending` (5 %) of
  the initial LR once it gets there ("constant ending").
- The last BN of every residual block starts with γ = 0, so every residual block
  starts as the identity.
- Regularisation on the largest network only: dropout runs on the largest alone;
  weight decay is applied once per optimiser step to every parameter, which is the
  L2 term of the largest network's loss (it uses every parameter), never again for
  the smaller subnets.
- SGD or RMSProp: `optimizer.name` (the paper uses RMSProp on ImageNet-1k; the DepS
  authors found SGD better on CIFAR and ImageNet-100).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from workers.methods.base import DistillingConfig, DistillingMethod, SubnetStep, Target

if TYPE_CHECKING:  # the type alone: a method module loads without torch (see base.py)
    from workers.supernet.supernet import ElasticSupernet


class BigNASConfig(DistillingConfig):
    name: Literal["bignas"] = "bignas"
    epochs: int = Field(200, gt=0)
    subnets_per_step: int = Field(4, ge=2)
    lr_constant_ending: float = Field(0.05, gt=0.0, le=1.0, description="the LR holds at this fraction of its start")
    zero_init_residual_gamma: bool = True


class BigNAS(DistillingMethod):
    name = "bignas"
    config_model = BigNASConfig
    config: BigNASConfig

    def phase(self, epoch: int) -> str:
        return "sandwich"

    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        full = SubnetStep(self.space.largest(), Target.LABELS, 1.0, dropout=True, is_teacher=True)
        students = [self.space.smallest()] + [self.space.sample(rng) for _ in range(self.config.subnets_per_step - 2)]
        return [full] + [SubnetStep(c, Target.INPLACE_KD, 1.0, dropout=False) for c in students]

    def lr_constant_ending(self) -> float | None:
        return self.config.lr_constant_ending

    def init_weights(self, net: ElasticSupernet) -> None:
        if self.config.zero_init_residual_gamma:
            net.zero_residual_gammas()
