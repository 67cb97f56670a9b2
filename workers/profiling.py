"""Timing a run's work on its own workers before it runs: the raw data of the cost forecast.

Every worker of the group builds what the training loop builds (data, supernet,
optimiser, DDP) and runs a few real steps of each phase, the ones the method asks
for at the phase's first epoch; rank 0's times are what the ledger would charge.
The per-epoch fixed work (all-reduce of the epoch's sums, checkpoint save, a fresh
data-loader iterator) is timed once, and so is the set-up itself. Then the ranks
calibrate and evaluate subnets side by side, as the evaluation workers will.

The caller joins the workers into one process group first (world > 1); nothing
here knows of Ray.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from workers.data.datasets import calibration_dataset, num_classes, test_dataset, to_tensors
from workers.evaluation import SubnetEvaluator
from workers.methods import TrainingMethod, build_method
from workers.optim import build_optimizer
from workers.supernet.factory import build_space, build_supernet
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SubnetConfig
from workers.training_loop import distributed_train_loader, run_step, step_rng

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec


@dataclass(frozen=True)
class ProfileRequest:
    spec: JobSpec
    phases: tuple[tuple[str, int], ...]  # (phase, its first epoch)
    steps: int  # timed steps per phase, after one untimed step
    eval_subnets: tuple[str, ...] = ()  # subnet configs (JSON) to calibrate and evaluate
    eval_test_images: int = 1024  # at most this many test images per timed evaluation; the rest is extrapolated


@dataclass(frozen=True)
class PhaseTiming:
    phase: str
    epoch: int
    step_seconds: list[float]  # rank 0's wall time of each timed step
    first_step_seconds: float  # the untimed step before them
    subnets_per_step: float

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)


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

    def to_dict(self) -> dict:
        return {
            "world": self.world,
            "setup_seconds": self.setup_seconds,
            "epoch_fixed_seconds": self.epoch_fixed_seconds,
            "steps_per_epoch": self.steps_per_epoch,
            "phases": [
                {
                    "phase": p.phase,
                    "epoch": p.epoch,
                    "step_seconds": p.step_seconds,
                    "first_step_seconds": p.first_step_seconds,
                    "subnets_per_step": p.subnets_per_step,
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
            phases=[PhaseTiming(**p) for p in data["phases"]],
            evaluations=[EvalTiming(**e) for e in data["evaluations"]],
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(values: list[float], device: torch.device, op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            tensor = tensor.to(device)
        dist.all_reduce(tensor, op=op)
    return tensor.cpu().tolist()


def _frozen_teacher(spec: JobSpec, method: TrainingMethod, classes: int, device: torch.device) -> nn.Module:
    """A stand-in for a stage's frozen teacher: same network and cost, weights do not matter for timing."""
    teacher = build_supernet(spec, method.space, classes)
    teacher.set_active_subnet(method.space.largest())
    teacher.requires_grad_(False)
    return teacher.to(device, memory_format=torch.channels_last).eval()


def profile_worker(request: ProfileRequest, rank: int, world: int, device: torch.device) -> Profile:
    """Run on every worker of the group; every rank returns the same Profile (rank 0's times)."""
    spec = request.spec
    started = time.time()
    torch.set_num_threads(max(1, spec.cluster.cpus_per_worker))
    space = build_space(spec)
    method = build_method(spec.method, space, spec.seed)
    loader, sampler = distributed_train_loader(spec, rank, world, device)
    steps_per_epoch = len(loader)
    torch.manual_seed(spec.seed)
    classes = num_classes(spec.dataset)
    net = build_supernet(spec, space, classes)
    method.init_weights(net)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(net, spec.optimizer, 1e-3)
    model: nn.Module = net
    if world > 1:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    distill = method.distillation()
    _sync(device)
    setup_seconds = time.time() - started

    batches = iter(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        return (
            images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
            labels.to(device, non_blocking=True),
        )

    model.train()
    phases, fetches = [], []
    for phase, epoch in request.phases:
        teacher = None
        if method.stage_of(epoch).teacher is not None:
            teacher = _frozen_teacher(spec, method, classes, device)
        times, counts = [], []
        for step in range(request.steps + 1):
            step_started = time.time()
            images, labels = next_batch()
            fetches.append(time.time() - step_started)
            steps = method.steps(epoch, step, steps_per_epoch, step_rng(spec.seed, epoch, step))
            optimizer.zero_grad(set_to_none=True)
            run_step(model, steps, images, labels, spec.optimizer.label_smoothing, distill, teacher)
            optimizer.step()
            _sync(device)
            times.append(time.time() - step_started)
            counts.append(len(steps))
        phases.append(PhaseTiming(phase, epoch, times[1:], times[0], sum(counts) / len(counts)))
    optimizer.zero_grad(set_to_none=True)

    # The epoch's fixed work, as the loop does it: a fresh loader iterator, the all-reduce of its sums,
    # and rank 0 saving the checkpoint (model and optimiser state).
    fixed_started = time.time()
    sampler.set_epoch(1)
    batches = iter(loader)
    next_batch()
    _all_reduce([0.0, 0.0, 0.0], device)
    if rank == 0:
        with tempfile.TemporaryDirectory() as directory:
            torch.save(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0},
                os.path.join(directory, "state.pt"),
            )
    _sync(device)
    # The first batch of the fresh iterator is also a step's own fetch, which the step times already hold.
    epoch_fixed = max(0.0, time.time() - fixed_started - (statistics.median(fetches) if fetches else 0.0))

    evaluations = _profile_evaluation(request, net.state_dict(), classes, rank, world, device)
    # Every rank ends with rank 0's figures, so the caller may read any of them.
    shared = _all_reduce([setup_seconds if rank == 0 else 0.0, epoch_fixed if rank == 0 else 0.0], device)
    return Profile(
        world=world,
        setup_seconds=shared[0],
        epoch_fixed_seconds=shared[1],
        phases=phases,
        evaluations=evaluations,
        steps_per_epoch=steps_per_epoch,
    )


def _profile_evaluation(
    request: ProfileRequest, state_dict: dict, classes: int, rank: int, world: int, device: torch.device
) -> list[EvalTiming]:
    """The ranks evaluate the requested subnets side by side, as that many evaluation workers would."""
    spec, ev = request.spec, request.spec.evaluation
    configs = [SubnetConfig.from_json(text) for text in request.eval_subnets]
    if not configs:
        return []
    evaluators = max(1, min(world, ev.workers))
    mine = [i for i in range(len(configs)) if i % evaluators == rank] if rank < evaluators else []
    seconds = [0.0] * len(configs)
    calibration_images = [0.0] * len(configs)
    test_used = [0.0] * len(configs)
    full_test = len(test_dataset(spec.dataset))
    if mine:
        calibration, _ = to_tensors(calibration_dataset(spec.dataset, ev.calibration_images))
        test = test_dataset(spec.dataset)
        test_images, test_labels = to_tensors(Subset(test, range(min(len(test), request.eval_test_images))))
        threads = getattr(ev, "threads_per_worker", None) or ev.cpus_per_worker
        evaluator = SubnetEvaluator(spec, state_dict, classes, calibration, test_images, test_labels, threads)
        for i in mine:
            (row,) = evaluator.evaluate([configs[i].to_dict()])
            seconds[i] = row["eval_seconds"]
            calibration_images[i] = row["calibration_images"]
            test_used[i] = row["test_images"]
        torch.set_num_threads(max(1, spec.cluster.cpus_per_worker))
    totals = _all_reduce(seconds + calibration_images + test_used, device)
    n = len(configs)
    space = build_space(spec)
    return [
        EvalTiming(
            subnet_id=config.subnet_id,
            macs=profile_subnet(space, config, classes).macs,
            seconds=totals[i],
            calibration_images=int(totals[n + i]),
            test_images_used=int(totals[2 * n + i]),
            test_images=full_test,
        )
        for i, config in enumerate(configs)
    ]
