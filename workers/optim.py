"""The optimiser that the `optimizer` section (`workers/optim_spec.py`) builds, and the per-iteration LR schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workers.optim_spec import OptimizerSpec


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
