"""What a stage of a method trains with, besides the supernet: its learning-rate schedule and its frozen teacher."""

from __future__ import annotations

import torch

from workers.job import WorkerSpec
from workers.methods import Stage, TrainingMethod
from workers.optim import LRSchedule, scaled_lr
from workers.supernet.space import SearchSpace
from workers.supernet.supernet import ElasticSupernet, build_supernet


def load_frozen_teacher(
    work: WorkerSpec, space: SearchSpace, num_classes: int, checkpoint_file: str, device: torch.device
) -> ElasticSupernet:
    """The teacher of a later stage: the largest network with a finished stage's weights, in eval mode, no grads."""
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    return frozen_teacher(work, space, num_classes, state["model"], device)


def frozen_teacher(
    work: WorkerSpec, space: SearchSpace, num_classes: int, weights: dict, device: torch.device
) -> ElasticSupernet:
    teacher = build_supernet(work, space, num_classes)
    teacher.load_state_dict(weights)
    teacher.set_active_subnet(space.largest())
    teacher.requires_grad_(False)
    return teacher.to(device, memory_format=torch.channels_last).eval()


def stage_schedule(
    work: WorkerSpec, method: TrainingMethod, stage: Stage, global_batch: int, steps_per_epoch: int
) -> LRSchedule:
    """The stage's LR schedule: its own LR, warmup and floor where it sets them, the spec's otherwise."""
    opt = work.optimizer
    lr = stage.lr if stage.lr is not None else opt.lr
    lr_batch = stage.lr_batch if stage.lr_batch is not None else opt.lr_batch
    warmup = stage.warmup_epochs if stage.warmup_epochs is not None else opt.warmup_epochs
    return LRSchedule(
        base_lr=scaled_lr(lr, lr_batch, global_batch),
        total_iterations=stage.epochs * steps_per_epoch,
        warmup_iterations=int(warmup * steps_per_epoch),
        kind=opt.schedule,
        floor=stage.lr_floor if stage.lr_floor is not None else opt.lr_floor,
        constant_ending=method.lr_constant_ending(),
    )
