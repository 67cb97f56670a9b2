"""One training step of a supernet: the subnets of a minibatch, each forward and backward, then one gradient
reduction across ranks.

The method says which subnets a minibatch trains (`SubnetStep`s): the training
loop, the forecast's timed steps and the gradient diagnostic all run them through
`subnet_loss`, the one place a step's target (labels, in-place distillation, a
frozen teacher) becomes a loss. Gradients of the k subnets accumulate locally and
are averaged across ranks once per optimiser step (`GradientAverager`), however
many subnets the step trained and whichever parameters the last one left unused.
Losses stay on the device: nothing in a step waits for the host.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from workers.distillation import DistillationLoss
from workers.methods import SubnetStep, Target
from workers.precision import MixedPrecision
from workers.supernet.supernet import ElasticSupernet

# Gradients are averaged in buckets of about this many bytes: few collectives, none too large to overlap.
BUCKET_BYTES = 25 * 1024 * 1024


def step_rng(seed: int, epoch: int, step: int) -> random.Random:
    """The same on every rank, so all ranks train the same subnets in a step."""
    return random.Random(seed * 1_000_003 + epoch * 100_003 + step)


def step_resolution(resolutions: tuple[int, ...], seed: int, epoch: int, step: int) -> int | None:
    """A minibatch's resolution in an elastic-resolution space (None: as loaded), the same on every rank.

    Its own stream, beside the step's: the subnets a method draws do not depend on whether resolution is elastic.
    """
    if len(resolutions) < 2:
        return None
    return random.Random(f"resolution/{seed}/{epoch}/{step}").choice(resolutions)


def subnet_loss(
    step: SubnetStep,
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    distill: DistillationLoss,
    inplace_teacher: torch.Tensor | None,
    frozen_teacher: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate for one subnet of a step, and the value to log (detached).

    `inplace_teacher` is the detached output of the step's teacher subnet (an earlier subnet of the same
    minibatch); `frozen_teacher` the output of the stage's frozen teacher. A distillation term is logged
    as its true value (for the α-divergence, not the surrogate).
    """
    if step.target is Target.LABELS:
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, loss.detach()
    if step.target is Target.INPLACE_KD:
        if inplace_teacher is None:
            raise RuntimeError("in-place distillation needs a teacher step earlier in the minibatch")
        loss, logged = distill(logits, inplace_teacher)
        return loss, logged.detach()
    if frozen_teacher is None:
        raise RuntimeError("distillation from a frozen teacher needs a stage with a teacher")
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    kd, kd_value = distill(logits, frozen_teacher)
    return ce + step.kd_weight * kd, (ce.detach() + step.kd_weight * kd_value.detach())


@dataclass
class StepLosses:
    """A step's logged losses, on the device: the first subnet's, and the sum and count of the others'."""

    first: torch.Tensor
    others_sum: torch.Tensor
    others: int


def run_step(
    net: ElasticSupernet,
    steps: list[SubnetStep],
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    distill: DistillationLoss,
    frozen_teacher: nn.Module | None = None,
    precision: MixedPrecision | None = None,
) -> StepLosses:
    """Forward and backward every subnet of a minibatch, accumulating gradients in this process.

    Forwards run under `precision`'s autocast; every loss is computed in fp32 from the logits, and scaled by
    the subnet's gradient weight in fp32.
    """
    precision = precision or MixedPrecision("fp32", images.device)
    inplace_logits: torch.Tensor | None = None
    frozen_logits: torch.Tensor | None = None
    first = others_sum = torch.zeros((), device=images.device)
    for i, s in enumerate(steps):
        net.set_active_subnet(s.config)
        net.active_dropout = net.dropout_rate if s.dropout else 0.0
        with precision.autocast():
            logits = net(images).float()
        if s.target is Target.LABELS_AND_KD and frozen_logits is None:
            if frozen_teacher is None:
                raise RuntimeError("distillation from a frozen teacher needs a stage with a teacher")
            with torch.no_grad(), precision.autocast():
                frozen_logits = frozen_teacher(images).float()
        loss, logged = subnet_loss(s, logits, labels, label_smoothing, distill, inplace_logits, frozen_logits)
        precision.backward(loss * s.grad_weight)
        if s.is_teacher:
            inplace_logits = logits.detach()
        if i == 0:
            first = logged
        else:
            others_sum = others_sum + logged
    return StepLosses(first, others_sum, len(steps) - 1)


class GradientAverager:
    """Averages the gradients of `params` across the ranks, once per optimiser step, in buckets.

    Every rank reduces the same buckets of every parameter whatever subnets the step
    trained, so the collectives always match; a parameter no subnet of the step used
    (the same on every rank: they train the same subnets) keeps no gradient, as
    PyTorch leaves it, so the optimiser skips it as it would in one process.
    """

    def __init__(self, params: Iterable[nn.Parameter], world: int, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.world = world
        self.buckets: list[list[nn.Parameter]] = []
        size = 0
        for param in params:
            if not param.requires_grad:
                continue
            bytes_ = param.numel() * param.element_size()
            if not self.buckets or size + bytes_ > bucket_bytes or self.buckets[-1][0].dtype != param.dtype:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(param)
            size += bytes_

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def __call__(self) -> None:
        if not self.active:
            return
        pending = []
        for bucket in self.buckets:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = _flatten_dense_tensors(grads)
            pending.append((dist.all_reduce(flat, async_op=True), flat, bucket, grads))
        for work, flat, bucket, grads in pending:
            work.wait()
            flat.div_(self.world)
            for param, averaged in zip(bucket, _unflatten_dense_tensors(flat, grads)):
                if param.grad is not None:
                    param.grad.copy_(averaged)
