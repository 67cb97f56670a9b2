"""Timing a run's work on its own workers: the raw data of the cost forecast.

The workers of a training job time a few real steps of each phase (the ones the
method asks for at the phase's first epoch) on the set-up training uses
(`workers/worker_setup.py`), before the first epoch; rank 0's times are what the
ledger would charge. The per-epoch fixed work (all-reduce of the epoch's sums,
checkpoint save, a fresh data-loader iterator) is timed once, and so is the
set-up itself. Then the ranks calibrate and evaluate subnets side by side, as the
evaluation workers will. The weights, optimiser state and random state are put
back afterwards, so training starts exactly as it would without the measurement.
A dry run times the same on a set-up of its own (`profile_worker`).

The caller joins the workers into one process group first (world > 1); nothing
here knows of Ray.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
from torch import nn

from workers.data.datasets import test_dataset
from workers.diagnostics import diagnostics_seconds
from workers.evaluation import SubnetEvaluator
from workers.job import WorkerSpec
from workers.step import run_step, step_resolution, step_rng
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SubnetConfig
from workers.supernet.supernet import build_supernet
from workers.worker_setup import WorkerSetup, set_up_worker

Clock = Callable[[], float]


@dataclass(frozen=True)
class ProfileRequest:
    work: WorkerSpec
    phases: tuple[tuple[str, int], ...]  # (phase, its first epoch)
    steps: int  # timed steps per phase, at least; after `warmup_steps` untimed ones
    eval_subnets: tuple[str, ...] = ()  # subnet configs (JSON) to calibrate and evaluate
    eval_test_images: int = 1024  # at most this many test images per timed evaluation; the rest is extrapolated
    warmup_steps: int = 1  # untimed steps first (the first one's time is kept: a job's first step pays for more)
    max_steps: int | None = None  # time more steps, up to this many, until the median settles (None: `steps`)
    max_seconds: float = float("inf")  # per phase, timed steps summed: the cap on a median that won't settle
    tolerance: float = 0.02  # settled: the last quarter of the steps moved the median by less than this fraction
    known: tuple[PhaseTiming, ...] = ()  # timings of identical work measured before (other phases, methods)


@dataclass(frozen=True)
class PhaseTiming:
    phase: str
    epoch: int
    step_seconds: list[float]  # each timed step's wall time on the slowest rank (DDP waits for it)
    first_step_seconds: float  # the untimed first step
    subnets_per_step: float
    work_key: str = ""  # the same for phases whose steps do the same work (`phase_work_key`)
    reused_from: str = ""  # where this measurement was timed (`<run>/<phase>`, or a phase of this run), if not here

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    def reused_as(self, phase: str, epoch: int) -> PhaseTiming:
        return replace(self, phase=phase, epoch=epoch, reused_from=self.reused_from or self.phase)


def median_settled(times: list[float], tolerance: float) -> bool:
    """Whether the median of `times` has stopped moving: adding the last quarter of them (at least 2) moved it by
    less than `tolerance` of itself, and so it did one step earlier too."""

    def steady(values: list[float]) -> bool:
        last = max(2, len(values) // 4)
        if len(values) < 2 * last:
            return False
        median = statistics.median(values)
        return abs(median - statistics.median(values[:-last])) <= tolerance * median

    return steady(times) and steady(times[:-1])


def phase_work_key(setup: WorkerSetup, epoch: int, steps: int) -> str:
    """What a phase's step costs depends on, and nothing else: data, network, optimiser kind, precision, workers,
    and the subnets, targets and resolutions of its first `steps` steps. Phases (of any method) with equal keys
    do the same work: one measurement serves them all."""
    work, method = setup.work, setup.method
    signature = []
    for step in range(steps):
        planned = method.steps(epoch, step, setup.steps_per_epoch, step_rng(work.seed, epoch, step))
        resolution = step_resolution(method.space.resolutions, work.seed, epoch, step)
        signature.append([resolution, *((s.config.subnet_id, s.target.value, s.dropout) for s in planned)])
    basis = {
        "dataset": work.dataset.model_dump(mode="json", exclude={"index"}),
        "space": work.space.model_dump(mode="json"),
        "optimizer": work.optimizer.name,
        "precision": work.precision,
        "threads": work.threads,
        "world": setup.world,
        "device": setup.device.type,
        "teacher": method.stage_of(epoch).teacher is not None,
        "steps": signature,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalTiming:
    subnet_id: str
    macs: int
    seconds: float  # calibration + evaluation on the images used
    calibration_images: int
    test_images_used: int
    test_images: int  # the full test split

    @property
    def full_seconds(self) -> float:
        """Extrapolated to the whole test split: the forward cost is about the same per image either way."""
        used = self.calibration_images + self.test_images_used
        return self.seconds * (self.calibration_images + self.test_images) / max(1, used)


@dataclass(frozen=True)
class Profile:
    world: int
    setup_seconds: float  # data, supernet, optimiser and DDP, as the training loop's set-up
    epoch_fixed_seconds: float  # per epoch besides its steps: loader start, all-reduce, checkpoint save
    phases: list[PhaseTiming] = field(default_factory=list)
    evaluations: list[EvalTiming] = field(default_factory=list)
    steps_per_epoch: int = 0
    diagnostics_seconds: float = 0.0  # all the run's diagnostics (rank 0's, which the others wait for)
    started_at: float = 0.0  # when the workers began their set-up (a Unix time): the start-up ends there

    def to_dict(self) -> dict:
        return {
            "world": self.world,
            "setup_seconds": self.setup_seconds,
            "diagnostics_seconds": self.diagnostics_seconds,
            "started_at": self.started_at,
            "epoch_fixed_seconds": self.epoch_fixed_seconds,
            "steps_per_epoch": self.steps_per_epoch,
            "phases": [
                {
                    "phase": p.phase,
                    "epoch": p.epoch,
                    "step_seconds": p.step_seconds,
                    "first_step_seconds": p.first_step_seconds,
                    "subnets_per_step": p.subnets_per_step,
                    "work_key": p.work_key,
                    "reused_from": p.reused_from,
                }
                for p in self.phases
            ],
            "evaluations": [e.__dict__ for e in self.evaluations],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        return cls(
            world=data["world"],
            setup_seconds=data["setup_seconds"],
            epoch_fixed_seconds=data["epoch_fixed_seconds"],
            steps_per_epoch=data.get("steps_per_epoch", 0),
            diagnostics_seconds=data.get("diagnostics_seconds", 0.0),
            started_at=data.get("started_at", 0.0),
            phases=[PhaseTiming(**p) for p in data["phases"]],
            evaluations=[EvalTiming(**e) for e in data["evaluations"]],
        )


def _frozen_teacher(setup: WorkerSetup) -> nn.Module:
    """A stand-in for a stage's frozen teacher: same network and cost, weights do not matter for timing."""
    space = setup.method.space
    teacher = build_supernet(setup.work, space, setup.num_classes)
    teacher.set_active_subnet(space.largest())
    teacher.requires_grad_(False)
    return teacher.to(setup.device, memory_format=torch.channels_last).eval()


@contextmanager
def untouched(setup: WorkerSetup) -> Iterator[None]:
    """Whatever runs inside leaves the weights, the optimiser state and the random state as they were."""
    weights = copy.deepcopy(setup.net.state_dict())
    optimizer = copy.deepcopy(setup.optimizer.state_dict())
    devices = [setup.device] if setup.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            setup.optimizer.zero_grad(set_to_none=True)
            setup.net.load_state_dict(weights)
            setup.optimizer.load_state_dict(optimizer)


def profile_worker(request: ProfileRequest, rank: int, world: int, device: torch.device) -> Profile:
    """A dry run's measurement: a set-up of its own, then the timing. Every rank returns rank 0's figures."""
    started, started_at = time.perf_counter(), time.time()
    setup = set_up_worker(request.work, rank, world, device)
    setup.synchronize()
    return measure_profile(setup, request, time.perf_counter() - started, started_at=started_at)


def measure_profile(
    setup: WorkerSetup,
    request: ProfileRequest,
    setup_seconds: float,
    clock: Clock = time.perf_counter,
    started_at: float = 0.0,
) -> Profile:
    """Time the request's steps, fixed work and evaluations on `setup` (on every rank; returns rank 0's times)."""
    work, net, optimizer, method = setup.work, setup.net, setup.optimizer, setup.method
    loader = setup.loader
    batches = iter(loader)

    def next_batch(resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        return setup.on_device(images, labels, resolution)

    net.train()
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    phases: list[PhaseTiming] = []
    fetches: list[float] = []
    known = {t.work_key: t for t in request.known if t.work_key}
    max_steps = max(request.steps, request.max_steps or request.steps)
    for phase, epoch in request.phases:
        key = phase_work_key(setup, epoch, request.warmup_steps + request.steps)
        if key in known:  # the same work was timed already (an earlier phase, another method's run)
            phases.append(known[key].reused_as(phase, epoch))
            continue
        teacher = _frozen_teacher(setup) if method.stage_of(epoch).teacher is not None else None
        times: list[float] = []
        counts: list[int] = []
        first = 0.0
        step = 0
        while True:
            step_started = clock()
            images, labels = next_batch(step_resolution(method.space.resolutions, work.seed, epoch, step))
            fetches.append(clock() - step_started)
            steps = method.steps(epoch, step, setup.steps_per_epoch, step_rng(work.seed, epoch, step))
            optimizer.zero_grad(set_to_none=True)
            run_step(
                net, steps, images, labels, work.optimizer.label_smoothing, setup.distill, teacher, setup.precision
            )
            setup.average_gradients()
            setup.precision.step(optimizer, net.parameters(), work.optimizer.grad_clip_norm)
            setup.synchronize()
            elapsed = clock() - step_started  # not the timing's own all-reduce: a training step has no such wait
            # Every rank gets the slowest rank's time: they all decide alike when the median has settled.
            (seconds,) = setup.all_reduce([elapsed], op=dist.ReduceOp.MAX)
            if step == 0:
                first = seconds
            if step >= request.warmup_steps:
                times.append(seconds)
                counts.append(len(steps))
            step += 1
            if len(times) >= request.steps and (
                len(times) >= max_steps or sum(times) >= request.max_seconds or median_settled(times, request.tolerance)
            ):
                break
        timing = PhaseTiming(phase, epoch, times, first, sum(counts) / len(counts), work_key=key)
        known[key] = timing
        phases.append(timing)
    optimizer.zero_grad(set_to_none=True)

    # The epoch's fixed work, as the loop does it: a fresh loader iterator, the all-reduce of its sums,
    # and rank 0 saving the checkpoint (model and optimiser state).
    fixed_started = clock()
    setup.sampler.set_epoch(1)
    batches = iter(loader)
    next_batch()
    setup.all_reduce([0.0, 0.0, 0.0])
    if setup.rank == 0:
        with tempfile.TemporaryDirectory() as directory:
            torch.save(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0},
                os.path.join(directory, "state.pt"),
            )
    setup.synchronize()
    # The first batch of the fresh iterator is also a step's own fetch, which the step times already hold.
    epoch_fixed = max(0.0, clock() - fixed_started - (statistics.median(fetches) if fetches else 0.0))

    evaluations = _profile_evaluation(request, setup, clock)
    rank0 = setup.rank == 0
    diagnostics = diagnostics_seconds(work, method, net, setup.steps_per_epoch, clock) if rank0 else 0.0
    # Every rank ends with rank 0's figures, so the caller may read any of them.
    shared = setup.all_reduce(
        [setup_seconds if rank0 else 0.0, epoch_fixed if rank0 else 0.0, diagnostics, started_at if rank0 else 0.0]
    )
    return Profile(
        world=setup.world,
        setup_seconds=shared[0],
        epoch_fixed_seconds=shared[1],
        diagnostics_seconds=shared[2],
        started_at=shared[3],
        phases=phases,
        evaluations=evaluations,
        steps_per_epoch=setup.steps_per_epoch,
    )


def _profile_evaluation(request: ProfileRequest, setup: WorkerSetup, clock: Clock) -> list[EvalTiming]:
    """The ranks evaluate the requested subnets side by side, as that many evaluation workers would."""
    work, ev = request.work, request.work.evaluation
    configs = [SubnetConfig.from_json(text) for text in request.eval_subnets]
    if not configs:
        return []
    rank, world = setup.rank, setup.world
    evaluators = max(1, min(world, ev.workers))
    mine = [i for i in range(len(configs)) if i % evaluators == rank] if rank < evaluators else []
    seconds = [0.0] * len(configs)
    calibration_images = [0.0] * len(configs)
    test_used = [0.0] * len(configs)
    test = test_dataset(work.dataset)
    if mine:
        state = setup.net.state_dict()
        evaluator = SubnetEvaluator(work, state, setup.num_classes, ev.threads, test_limit=request.eval_test_images)
        for i in mine:
            started = clock()
            (row,) = evaluator.evaluate([configs[i].to_dict()])
            seconds[i] = clock() - started
            calibration_images[i] = row["calibration_images"]
            test_used[i] = row["test_images"]
        torch.set_num_threads(work.threads)
    totals = setup.all_reduce(seconds + calibration_images + test_used)
    n = len(configs)
    space = setup.method.space
    return [
        EvalTiming(
            subnet_id=config.subnet_id,
            macs=profile_subnet(space, config, setup.num_classes).macs,
            seconds=totals[i],
            calibration_images=int(totals[n + i]),
            test_images_used=int(totals[2 * n + i]),
            test_images=len(test),
        )
        for i, config in enumerate(configs)
    ]
