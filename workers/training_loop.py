"""The per-worker training function run by Ray Train's TorchTrainer.

It is method-agnostic: the method named by the spec says which subnets each
minibatch trains and with which target and gradient weight. Rank 0 saves a
checkpoint and writes the epoch's ledger row at the end of every epoch. A job
asked to measure the forecast times the run's work on its own set-up first
(`workers/profiling.py`), so a run starts its worker group once.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ray.train
import torch
from torch import nn

from workers.diagnostics import record_diagnostics
from workers.epoch_guard import EpochGuard
from workers.epoch_progress import EpochProgress, RankProgress, gather_ranks, restore_rng, rng_state
from workers.epoch_validation import EpochValidation
from workers.forecast_model import ForecastJob, forecast_from_profile
from workers.job import WorkerSpec
from workers.methods import Stage, TrainingMethod
from workers.optim import LRSchedule, build_optimizer
from workers.profiling import measure_profile, untouched
from workers.rundir.attempts import AttemptLog, next_attempt
from workers.rundir.forecast import save_forecast
from workers.rundir.holds import current_hold_start
from workers.rundir.pricing import Usage
from workers.rundir.stages import record_finished_stage
from workers.rundir.tables import RunStore
from workers.rundir.time_limit import TimeLimit
from workers.stage_training import frozen_teacher, stage_schedule
from workers.step import StepLosses, run_step, step_resolution, step_rng
from workers.worker_setup import WorkerSetup, set_up_worker

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class TrainJobConfig:
    """What the controller hands every training worker."""

    work: WorkerSpec
    run_dir: str
    devices: int
    device_type: str
    price_per_device_hour: float
    first_stage: int = 0  # index into the method's stages: this job trains it and every one after it
    init_checkpoint: str | None = None  # the previous stage's final weights: the first stage starts from them
    teacher_checkpoints: dict[str, str] = field(default_factory=dict)  # final weights of stages finished before
    forecast: ForecastJob | None = None  # measure the run's forecast in this job first
    time_limit: TimeLimit | None = None  # the allocation this job runs in ends: stop before it does


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


def _save_checkpoint(
    directory: str, setup: WorkerSetup, stage: int, epoch: int, progress: EpochProgress | None = None
) -> None:
    """`epoch`: the last epoch finished; `progress`: the one in flight, for a step checkpoint."""
    state = {"model": setup.net.state_dict(), "optimizer": setup.optimizer.state_dict(), "stage": stage}
    state |= {"epoch": epoch, "scaler": setup.precision.state_dict()}
    if progress is not None:
        state["progress"] = progress.to_dict()
    torch.save(state, os.path.join(directory, CHECKPOINT_FILE))


def _restore(job: TrainJobConfig) -> tuple[dict | None, dict | None]:
    """(the job's last checkpoint, if it belongs to a stage this job trains; the weights to start from)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        if state.get("stage", 0) >= job.first_stage:
            return state, state["model"]
    if job.init_checkpoint is not None:
        # Each phase of progressive shrinking starts from the previous one's weights with a fresh optimiser.
        return None, torch.load(job.init_checkpoint, map_location="cpu", weights_only=True)["model"]
    return None, None


def train_loop_per_worker(config: dict) -> None:
    job: TrainJobConfig = config["job"]
    work = job.work
    clock = time.monotonic
    started, started_at = clock(), time.time()
    quiet_ray_train_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run_dir = Path(job.run_dir)
    store = RunStore(run_dir)

    state, weights = _restore(job)
    setup = set_up_worker(work, rank, world, device, weights)
    method, net = setup.method, setup.net
    stages = method.stages()
    progress = None
    if state is not None:
        setup.optimizer.load_state_dict(state["optimizer"])
        setup.precision.load_state_dict(state.get("scaler"))
        if state.get("progress") is not None:
            progress = EpochProgress.from_dict(state["progress"])
    resume_stage = state["stage"] if state is not None else job.first_stage
    resume_epoch = state["epoch"] + 1 if state is not None else stages[resume_stage].first_epoch
    if progress is not None and progress.of(rank, world) is None:
        if rank == 0:
            print(
                f"[{work.run}] the step checkpoint of epoch {progress.epoch + 1} was saved by "
                f"{len(progress.ranks)} workers, not {world}: epoch {progress.epoch + 1} starts again",
                flush=True,
            )
        progress = None
    steps_per_epoch = setup.steps_per_epoch
    validation = (
        EpochValidation(work, setup.num_classes, device) if rank == 0 and work.evaluation.validation.enabled else None
    )
    # Rank 0's marker of this attempt; it also charges the lost time of earlier attempts that died mid-epoch.
    attempt = next_attempt(run_dir) if rank == 0 else -1
    attempt_log = (
        AttemptLog.begin(
            run_dir,
            attempt,
            started_at,
            run=work.run,
            method=method.name,
            group=work.group,
            devices=job.devices,
            device_type=job.device_type,
            price_per_device_hour=job.price_per_device_hour,
            resume_epoch=resume_epoch,
        )
        if rank == 0
        else None
    )
    guard = EpochGuard(
        work,
        run_dir,
        method,
        rank,
        device,
        steps_per_epoch,
        job.devices,
        job.price_per_device_hour,
        clock=clock,
        time_limit=job.time_limit,
    )
    if job.forecast is not None:
        setup.synchronize()
        measured_from = clock()
        with untouched(setup):
            profile = measure_profile(setup, job.forecast.request, measured_from - started, clock, started_at)
        if rank == 0:
            forecast = forecast_from_profile(
                job.forecast.basis,
                profile,
                clock() - measured_from,
                measured_in_run=True,
                held_since=current_hold_start(run_dir),
            )
            save_forecast(run_dir, forecast)
        if resume_epoch < method.epochs and guard.before_training(resume_epoch, charged_from=started):
            if attempt_log is not None:
                attempt_log.abandon_epoch(resume_epoch)  # the set-up and the measurement, paid for and lost
            return

    finals = dict(job.teacher_checkpoints)  # stage name: its final weights (a file, or this job's own copy)
    charged_from = started  # the end of the last epoch charged: what comes after it is the next epoch's overhead
    stopped = False
    for index in range(resume_stage, len(stages)):
        stage = stages[index]
        if index != resume_stage:  # each stage of progressive shrinking starts with a fresh optimiser
            setup.optimizer = build_optimizer(net, work.optimizer, 0.0)
        teacher = None
        if stage.teacher is not None:
            source = finals.get(stage.teacher)
            if source is None:
                raise RuntimeError(f"stage {stage.name!r} distils from stage {stage.teacher!r}, which has no weights")
            final = source if isinstance(source, dict) else torch.load(source, map_location="cpu", weights_only=True)
            teacher = frozen_teacher(work, method.space, setup.num_classes, final["model"], device)
        schedule = stage_schedule(work, method, stage, setup.global_batch, steps_per_epoch)
        first = resume_epoch if index == resume_stage else stage.first_epoch
        for epoch in range(first, stage.end_epoch):
            resumed = progress if progress is not None and progress.epoch == epoch else None
            charged_from, stopped = _train_epoch(
                setup,
                job,
                stage,
                schedule,
                teacher,
                guard,
                attempt_log,
                store,
                attempt,
                epoch,
                charged_from,
                clock,
                resumed,
                validation,
            )
            progress = None
            if stopped:
                break
        if stopped:
            break
        final = {"model": net.state_dict(), "epoch": stage.end_epoch - 1}
        finals[stage.name] = final
        if rank == 0:
            record_finished_stage(run_dir, stage.name, stage.first_epoch, stage.epochs, final["model"], final["epoch"])
    if attempt_log is not None and (not guard.stopped_mid_epoch or guard.save_step):
        attempt_log.finish()  # nothing is lost: the last checkpoint holds all that was trained


def train_step(
    setup: WorkerSetup,
    epoch: int,
    step: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    frozen: nn.Module | None = None,
) -> StepLosses:
    """One optimiser step on a minibatch: its subnets' passes, one gradient reduction, the update.

    Nothing here waits for the host: the losses stay on the device.
    """
    work, method, net, optimizer = setup.work, setup.method, setup.net, setup.optimizer
    resolution = step_resolution(method.space.resolutions, work.seed, epoch, step)
    images, labels = setup.on_device(images, labels, resolution)
    for group in optimizer.param_groups:
        group["lr"] = lr
    steps = method.steps(epoch, step, setup.steps_per_epoch, step_rng(work.seed, epoch, step))
    optimizer.zero_grad(set_to_none=True)
    smoothing = work.optimizer.label_smoothing
    losses = run_step(net, steps, images, labels, smoothing, setup.distill, frozen, setup.precision)
    setup.average_gradients()
    setup.precision.step(optimizer, net.parameters(), work.optimizer.grad_clip_norm)
    return losses


def _train_epoch(
    setup: WorkerSetup,
    job: TrainJobConfig,
    stage: Stage,
    schedule: LRSchedule,
    frozen: nn.Module | None,
    guard: EpochGuard,
    attempt_log: AttemptLog | None,
    store: RunStore,
    attempt: int,
    epoch: int,
    charged_from: float,
    clock,
    resumed: EpochProgress | None = None,
    validation: EpochValidation | None = None,
) -> tuple[float, bool]:
    """One epoch of `stage` (from `resumed`'s step, if given), its checkpoint and its ledger row; returns (when
    it was charged up to, stop?)."""
    work, method, net = setup.work, setup.method, setup.net
    steps_per_epoch, rank, device = setup.steps_per_epoch, setup.rank, setup.device
    epoch_start = clock()
    overhead = epoch_start - charged_from  # set-up, restore, a forecast, a stage change, the diagnostics before
    guard.begin_epoch(epoch, charged_from)
    setup.sampler.set_epoch(epoch)
    net.train()
    loss_sum = sub_sum = torch.zeros((), device=device)
    sub_count = subnets = first_step = 0
    wall_before = 0.0
    lr = schedule.base_lr
    mine = resumed.of(rank, setup.world) if resumed is not None else None
    if resumed is not None and mine is not None:
        first_step, lr, wall_before = resumed.step, resumed.lr, resumed.wall_seconds
        overhead += resumed.overhead_seconds
        setup.sampler.resume_at(first_step * work.dataset.batch_size)
        loss_sum = torch.tensor(mine.loss_sum, device=device)
        sub_sum = torch.tensor(mine.subnet_loss_sum, device=device)
        sub_count, subnets = mine.subnet_losses, mine.subnets
    batches = iter(setup.loader)  # starting the loader draws a seed from the global generator: restore after it
    if mine is not None:
        restore_rng(mine.rng, device)
    for step, (images, labels) in enumerate(batches, start=first_step):
        if guard.before_step(step):
            break
        lr = schedule.at((epoch - stage.first_epoch) * steps_per_epoch + step)
        losses = train_step(setup, epoch, step, images, labels, lr, frozen)
        if attempt_log is not None:
            attempt_log.heartbeat(epoch)
        loss_sum = loss_sum + losses.first
        sub_sum = sub_sum + losses.others_sum
        sub_count += losses.others
        subnets += losses.others + 1
    if guard.stopped_mid_epoch:
        if guard.save_step:
            if step > first_step:  # else the last checkpoint already holds everything up to here
                mine_now = RankProgress(loss_sum.item(), sub_sum.item(), sub_count, subnets, rng_state(device))
                progress = EpochProgress(
                    epoch, step, lr, wall_before + clock() - epoch_start, overhead, gather_ranks(mine_now, setup.world)
                )
                _report_step_checkpoint(setup, method.stages().index(stage), progress)
        elif attempt_log is not None:
            attempt_log.abandon_epoch(epoch)
        return charged_from, True  # the budget (its last checkpoint is the previous epoch's), or the time limit
    guard.steps_finished()
    total_loss, total_sub, total_count = setup.all_reduce([loss_sum.item(), sub_sum.item(), float(sub_count)])
    metrics = {
        "epoch": epoch,
        "phase": method.phase(epoch),
        "loss": total_loss / (steps_per_epoch * setup.world),
        "subnet_loss": total_sub / total_count if total_count else None,
        "lr": lr,
        "scalars": method.scalars(epoch, steps_per_epoch - 1, steps_per_epoch),
    }
    measured_at = 0.0
    with tempfile.TemporaryDirectory() as directory:
        ckpt = None
        if rank == 0:
            _save_checkpoint(directory, setup, method.stages().index(stage), epoch)
            ckpt = ray.train.Checkpoint.from_directory(directory)
            measured_at = clock()
            wall = wall_before + measured_at - epoch_start
            if validation is not None:
                metrics.update(validation.measure(net))
            images_seen = setup.global_batch * steps_per_epoch
            _record_epoch(store, job, method, metrics, attempt, wall, overhead, images_seen, subnets / steps_per_epoch)
        stop = guard.after_epoch(epoch, method.epochs)
        reported = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        ray.train.report(reported | metrics["scalars"], checkpoint=ckpt)
        if attempt_log is not None:
            attempt_log.epoch_done(epoch)  # reported: if Ray Train never keeps it, the next attempt charges it lost
    charged_from = measured_at if rank == 0 else clock()  # what follows the row is the next epoch's overhead
    record_diagnostics(work, store, method, net, epoch, steps_per_epoch, rank)  # rank 0, chosen epochs only
    return charged_from, stop  # a cancel request, the budget or the time limit: this checkpoint is the last for now


def _report_step_checkpoint(setup: WorkerSetup, stage: int, progress: EpochProgress) -> None:
    """Store a step checkpoint of the epoch in flight (every rank reports; rank 0 brings the files)."""
    with tempfile.TemporaryDirectory() as directory:
        ckpt = None
        if setup.rank == 0:
            _save_checkpoint(directory, setup, stage, progress.epoch - 1, progress)
            ckpt = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"epoch": progress.epoch, "step": progress.step}, checkpoint=ckpt)


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
    usage = Usage.of(wall + overhead, job.devices, job.price_per_device_hour)
    store.record_epoch(
        {
            "run": job.work.run,
            "method": method.name,
            "group": job.work.group,
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
            "scalars": metrics["scalars"],
            "finished_at": datetime.now(timezone.utc),
            "val_top1": metrics.get("val_top1"),
            "val_top1_smallest": metrics.get("val_top1_smallest"),
        }
    )
