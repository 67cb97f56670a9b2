"""The `optimizer` section of a job spec: the optimiser it builds and the per-iteration learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from workers.sections import Section


class OptimizerSpec(Section):
    name: Literal["sgd", "rmsprop"] = "sgd"
    lr: float = Field(0.1, gt=0.0, description="learning rate per `lr_batch` images; scaled to the global batch")
    lr_batch: int = Field(128, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = Field(True, description="SGD only")
    rmsprop_decay: float = Field(0.9, gt=0.0, lt=1.0, description="RMSProp's squared-gradient average (torch alpha)")
    rmsprop_eps: float = Field(1e-3, gt=0.0, description="RMSProp's epsilon, added to the root (torch convention)")
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay_on_bn_and_bias: bool = True
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lr_floor: float = Field(2.5e-3, ge=0.0, description="the cosine schedule never goes below this LR")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear LR warmup at the start of the run")
    grad_clip_norm: float | None = Field(None, gt=0.0)


def build_optimizer(model: nn.Module, spec: OptimizerSpec, base_lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # BN affine parameters and biases are 1-D: no weight decay on them.
        (no_decay if spec.no_decay_on_bn_and_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=base_lr, alpha=spec.rmsprop_decay, eps=spec.rmsprop_eps, momentum=spec.momentum
        )
    return torch.optim.SGD(groups, lr=base_lr, momentum=spec.momentum, nesterov=spec.nesterov)


def scaled_lr(lr: float, lr_batch: int, global_batch: int) -> float:
    """An LR given per `lr_batch` images, scaled linearly to the global batch."""
    return lr * global_batch / lr_batch


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup, then cosine (or constant) over one stage's iterations.

    The cosine ends at `floor` (its shape is rescaled to end there), or, with
    `constant_ending`, follows the cosine towards 0 and holds once it reaches that
    fraction of the initial LR (BigNAS).
    """

    base_lr: float
    total_iterations: int
    warmup_iterations: int = 0
    kind: str = "cosine"
    floor: float = 0.0
    constant_ending: float | None = None

    def at(self, iteration: int) -> float:
        if iteration < self.warmup_iterations:
            return self.base_lr * (iteration + 1) / self.warmup_iterations
        if self.kind == "constant":
            return self.base_lr
        progress = (iteration - self.warmup_iterations) / max(1, self.total_iterations - self.warmup_iterations)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.constant_ending is not None:
            return max(self.base_lr * cosine, self.base_lr * self.constant_ending)
        floor = min(self.floor, self.base_lr)
        return floor + (self.base_lr - floor) * cosine
