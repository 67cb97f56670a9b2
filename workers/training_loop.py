"""The per-worker training function run by Ray Train's TorchTrainer.

It is method-agnostic: the method named by the spec says which subnets each
minibatch trains and with which target and gradient weight. Rank 0 saves a
checkpoint and writes the epoch's ledger row at the end of every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from orchestrator.cost.attempts import AttemptLog
from orchestrator.cost.pricing import price_usage
from orchestrator.storage.run_store import RunStore
from workers.data.datasets import num_classes, train_dataset
from workers.diagnostics import record_diagnostics
from workers.distillation import DistillationLoss
from workers.epoch_guard import EpochGuard
from workers.methods import Stage, SubnetStep, Target, TrainingMethod, build_method
from workers.optim import LRSchedule, build_optimizer, scaled_lr
from workers.supernet.factory import build_space, build_supernet
from workers.supernet.space import SearchSpace
from workers.supernet.supernet import ElasticSupernet

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class TrainJobConfig:
    """What the controller hands every training worker."""

    spec: JobSpec
    run_dir: str
    devices: int
    device_type: str
    price_per_device_hour: float
    stage: int = 0  # index into the method's stages
    init_checkpoint: str | None = None  # the previous stage's final checkpoint: this stage starts from its weights
    teacher_checkpoint: str | None = None  # the frozen teacher's weights, for stages that name one


def step_rng(seed: int, epoch: int, step: int) -> random.Random:
    """The same on every rank, so all ranks train the same subnets in a step."""
    return random.Random(seed * 1_000_003 + epoch * 100_003 + step)


def _next_attempt(run_dir: Path) -> int:
    path = run_dir / "attempts.json"
    attempt = json.loads(path.read_text())["attempts"] if path.exists() else 0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"attempts": attempt + 1}))
    os.replace(tmp, path)
    return attempt


def _unwrap(model: nn.Module) -> ElasticSupernet:
    return model.module if isinstance(model, DistributedDataParallel) else model


def run_step(
    model: nn.Module,
    steps: list[SubnetStep],
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    distill: DistillationLoss,
    frozen_teacher: nn.Module | None = None,
) -> tuple[float, float | None]:
    """Forward and backward every subnet of a minibatch, accumulating gradients.

    Returns the first step's loss and the mean loss of the others (None if there are none).
    A distillation term is logged as its true value (for the α-divergence, not the surrogate).
    """
    net = _unwrap(model)
    inplace_logits: torch.Tensor | None = None
    frozen_logits: torch.Tensor | None = None
    first_loss, sub_losses = 0.0, []
    for i, s in enumerate(steps):
        net.set_active_subnet(s.config)
        net.active_dropout = net.dropout_rate if s.dropout else 0.0
        logits = model(images)
        if s.target is Target.LABELS:
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            logged = loss.detach()
        elif s.target is Target.INPLACE_KD:
            if inplace_logits is None:
                raise RuntimeError("in-place distillation needs a teacher step earlier in the minibatch")
            loss, logged = distill(logits, inplace_logits)
        else:
            if frozen_teacher is None:
                raise RuntimeError("distillation from a frozen teacher needs a stage with a teacher")
            if frozen_logits is None:
                with torch.no_grad():
                    frozen_logits = frozen_teacher(images)
            ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            kd, kd_value = distill(logits, frozen_logits)
            loss, logged = ce + s.kd_weight * kd, ce.detach() + s.kd_weight * kd_value
        (loss * s.grad_weight).backward()
        if s.is_teacher:
            inplace_logits = logits.detach()
        if i == 0:
            first_loss = logged.item()
        else:
            sub_losses.append(logged.item())
    return first_loss, (sum(sub_losses) / len(sub_losses) if sub_losses else None)


def load_frozen_teacher(
    spec: JobSpec, space: SearchSpace, num_classes: int, checkpoint_file: str, device: torch.device
) -> ElasticSupernet:
    """The teacher of a later stage: the largest network with a finished stage's weights, in eval mode, no grads."""
    teacher = build_supernet(spec, space, num_classes)
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    teacher.load_state_dict(state["model"])
    teacher.set_active_subnet(space.largest())
    teacher.requires_grad_(False)
    return teacher.to(device, memory_format=torch.channels_last).eval()


def stage_schedule(
    spec: JobSpec, method: TrainingMethod, stage: Stage, global_batch: int, steps_per_epoch: int
) -> LRSchedule:
    """The stage's LR schedule: its own LR, warmup and floor where it sets them, the spec's otherwise."""
    opt = spec.optimizer
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


def quiet_ray_train_logs() -> None:
    """One progress line per epoch is ours; Ray Train's per-report INFO lines are noise in a terminal.

    Its "Reporting training result" line is logged under its module's file path, not under "ray.train".
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def distributed_train_loader(
    spec: JobSpec, rank: int, world: int, device: torch.device
) -> tuple[DataLoader, DistributedSampler]:
    """This worker's shard of the training set, in full batches; a batch per worker must fit."""
    data = train_dataset(spec.dataset)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed, drop_last=True)
    loader = DataLoader(
        data,
        batch_size=spec.dataset.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=spec.dataset.loader_workers,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(
            f"dataset.batch_size {spec.dataset.batch_size} x {world} workers exceeds the {len(data)} training images"
        )
    return loader, sampler


def _save_checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    torch.save(
        {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
        os.path.join(directory, CHECKPOINT_FILE),
    )


def _all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def train_loop_per_worker(config: dict) -> None:
    job: TrainJobConfig = config["job"]
    spec = job.spec
    started = time.time()
    quiet_ray_train_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, spec.cluster.cpus_per_worker))
    device = ray.train.torch.get_device()
    run_dir = Path(job.run_dir)
    store = RunStore(run_dir)

    space = build_space(spec)
    method: TrainingMethod = build_method(spec.method, space, spec.seed)
    stage = method.stages()[job.stage]
    loader, sampler = distributed_train_loader(spec, rank, world, device)
    steps_per_epoch = len(loader)

    torch.manual_seed(spec.seed)
    classes = num_classes(spec.dataset)
    net = build_supernet(spec, space, classes)
    global_batch = spec.dataset.batch_size * world
    schedule = stage_schedule(spec, method, stage, global_batch, steps_per_epoch)
    base_lr = schedule.base_lr

    # Resume this stage from its last checkpoint; else start from the previous stage's weights
    # (with a fresh optimiser, as every phase of progressive shrinking does); else from scratch.
    start_epoch, state = stage.first_epoch, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        start_epoch = state["epoch"] + 1
    elif job.init_checkpoint is not None:
        net.load_state_dict(torch.load(job.init_checkpoint, map_location="cpu", weights_only=True)["model"])
    else:
        method.init_weights(net)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(net, spec.optimizer, base_lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    frozen_teacher = None
    if stage.teacher is not None:
        if job.teacher_checkpoint is None:
            raise RuntimeError(f"stage {stage.name!r} distils from stage {stage.teacher!r}, which has no checkpoint")
        frozen_teacher = load_frozen_teacher(spec, space, classes, job.teacher_checkpoint, device)
    distill = method.distillation()
    attempt = _next_attempt(run_dir) if rank == 0 else -1
    # Rank 0's marker of this attempt; it also charges the lost time of earlier attempts that died mid-epoch.
    attempt_log = (
        AttemptLog.begin(
            run_dir,
            attempt,
            started,
            run=spec.run,
            method=method.name,
            group=spec.group,
            devices=job.devices,
            device_type=job.device_type,
            price_per_device_hour=job.price_per_device_hour,
        )
        if rank == 0
        else None
    )

    model: nn.Module = net
    if world > 1:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    guard = EpochGuard(spec, run_dir, method, rank, device, steps_per_epoch, job.devices, job.price_per_device_hour)
    overhead = time.time() - started  # set-up and restore time, charged to this attempt's first epoch
    charged_from = started  # what an epoch stopped midway is charged from (as lost work)
    for epoch in range(start_epoch, stage.end_epoch):
        epoch_start = time.time()
        guard.begin_epoch(epoch, charged_from)
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = sub_sum = sub_count = subnets = 0.0
        lr = base_lr
        for step, (images, labels) in enumerate(loader):
            if guard.before_step(step):
                break
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            lr = schedule.at((epoch - stage.first_epoch) * steps_per_epoch + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            steps = method.steps(epoch, step, steps_per_epoch, step_rng(spec.seed, epoch, step))
            optimizer.zero_grad(set_to_none=True)
            loss, sub_loss = run_step(
                model, steps, images, labels, spec.optimizer.label_smoothing, distill, frozen_teacher
            )
            if spec.optimizer.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), spec.optimizer.grad_clip_norm)
            optimizer.step()
            if attempt_log is not None:
                attempt_log.heartbeat(epoch)
            loss_sum += loss
            subnets += len(steps)
            if sub_loss is not None:
                sub_sum, sub_count = sub_sum + sub_loss, sub_count + 1
        if guard.stopped_mid_epoch:
            if attempt_log is not None:
                attempt_log.abandon_epoch(epoch)
            break  # the budget: this run's last checkpoint is the previous epoch's
        guard.steps_finished()
        scalars = method.scalars(epoch, steps_per_epoch - 1, steps_per_epoch)
        loss_sum, sub_sum, sub_count = _all_reduce_sum([loss_sum, sub_sum, sub_count])
        metrics = {
            "epoch": epoch,
            "phase": method.phase(epoch),
            "loss": loss_sum / (steps_per_epoch * world),
            "subnet_loss": sub_sum / sub_count if sub_count else None,
            "lr": lr,
            **scalars,
        }
        with tempfile.TemporaryDirectory() as directory:
            ckpt = None
            if rank == 0:
                _save_checkpoint(directory, model, optimizer, epoch)
                ckpt = ray.train.Checkpoint.from_directory(directory)
                wall = time.time() - epoch_start
                _record_epoch(
                    store,
                    job,
                    method,
                    metrics,
                    attempt,
                    wall,
                    overhead,
                    global_batch * steps_per_epoch,
                    subnets / steps_per_epoch,
                )
                print(_progress_line(spec.run, method.epochs, metrics, wall), flush=True)
            stop = guard.after_epoch(epoch, stage.end_epoch)
            ray.train.report({k: v for k, v in metrics.items() if v is not None}, checkpoint=ckpt)
            charged_from = time.time()
            if attempt_log is not None:
                attempt_log.epoch_done(epoch)  # its checkpoint is stored: nothing up to here can be lost
        record_diagnostics(spec, store, method, net, epoch, steps_per_epoch, rank)  # rank 0, chosen epochs only
        overhead = 0.0
        if stop:
            break  # a cancel request, or the budget: this epoch's checkpoint is the run's last for now
    if attempt_log is not None and not guard.stopped_mid_epoch:
        attempt_log.finish()


def _record_epoch(
    store: RunStore,
    job: TrainJobConfig,
    method: TrainingMethod,
    metrics: dict,
    attempt: int,
    wall: float,
    overhead: float,
    images: int,
    subnets_per_step: float,
) -> None:
    usage = price_usage(wall + overhead, job.devices, job.price_per_device_hour)
    store.record_epoch(
        {
            "run": job.spec.run,
            "method": method.name,
            "group": job.spec.group,
            "epoch": metrics["epoch"],
            "phase": metrics["phase"],
            "attempt": attempt,
            "wall_seconds": wall,
            "overhead_seconds": overhead,
            "devices": job.devices,
            "device_type": job.device_type,
            "device_hours": usage.device_hours,
            "price_per_device_hour": job.price_per_device_hour,
            "dollars": usage.dollars,
            "images": images,
            "images_per_second": images / wall,
            "subnets_per_step": subnets_per_step,
            "loss": metrics["loss"],
            "subnet_loss": metrics["subnet_loss"],
            "lr": metrics["lr"],
            "epsilon": metrics.get("epsilon"),
            "finished_at": datetime.now(timezone.utc),
        }
    )


def _progress_line(run: str, epochs: int, metrics: dict, wall: float) -> str:
    extra = f" eps {metrics['epsilon']:.4f}" if "epsilon" in metrics else ""
    return (
        f"[{run}] epoch {metrics['epoch'] + 1}/{epochs} {metrics['phase']} "
        f"loss {metrics['loss']:.3f} lr {metrics['lr']:.4f}{extra} ({wall:.1f}s)"
    )
