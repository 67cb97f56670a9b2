"""Optimiser and per-iteration learning-rate schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from orchestrator.spec import OptimizerSpec


def build_optimizer(model: nn.Module, spec: OptimizerSpec, base_lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # BN affine parameters and biases are 1-D: no weight decay on them.
        (no_decay if spec.no_decay_on_bn_and_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=base_lr, momentum=spec.momentum, nesterov=spec.nesterov)


def scaled_lr(spec: OptimizerSpec, global_batch: int) -> float:
    """The spec gives the LR per `lr_batch` images; scale it linearly to the global batch."""
    return spec.lr * global_batch / spec.lr_batch


def lr_at(spec: OptimizerSpec, base_lr: float, iteration: int, total_iterations: int, iters_per_epoch: int) -> float:
    warmup = int(spec.warmup_epochs * iters_per_epoch)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    if spec.schedule == "constant":
        return base_lr
    floor = min(spec.lr_floor, base_lr)
    progress = (iteration - warmup) / max(1, total_iterations - warmup)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
