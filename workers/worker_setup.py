"""What every worker of a training job builds before its first step, training and the forecast's timing alike.

Data (this rank's shard of the training set), the method (built once per
process), the supernet with its weights on the device, the optimiser and the
gradient averaging across ranks: the forecast times exactly what training will
run because both start from this one set-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from workers.data.datasets import num_classes, train_dataset
from workers.distillation import DistillationLoss, build_distillation
from workers.job import WorkerSpec
from workers.methods import TrainingMethod, build_method
from workers.optim import build_optimizer
from workers.precision import MixedPrecision
from workers.step import GradientAverager
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import ElasticSupernet, build_supernet


def distributed_train_loader(
    work: WorkerSpec, rank: int, world: int, device: torch.device
) -> tuple[DataLoader, DistributedSampler]:
    """This worker's shard of the training set, in full batches; a batch per worker must fit."""
    data = train_dataset(work.dataset)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=work.seed, drop_last=True)
    loader = DataLoader(
        data,
        batch_size=work.dataset.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=work.dataset.loader_workers,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(
            f"dataset.batch_size {work.dataset.batch_size} x {world} workers exceeds the {len(data)} training images"
        )
    return loader, sampler


@dataclass
class WorkerSetup:
    work: WorkerSpec
    rank: int
    world: int
    device: torch.device
    method: TrainingMethod
    num_classes: int
    loader: DataLoader
    sampler: DistributedSampler
    net: ElasticSupernet
    optimizer: torch.optim.Optimizer
    average_gradients: GradientAverager
    distill: DistillationLoss
    precision: MixedPrecision

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def global_batch(self) -> int:
        return self.work.dataset.batch_size * self.world

    def on_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last),
            labels.to(self.device, non_blocking=True),
        )

    def all_reduce(self, values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
        """`values` reduced over every rank of the group (as they are, with one rank)."""
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                tensor = tensor.to(self.device)
            dist.all_reduce(tensor, op=op)
        return tensor.cpu().tolist()

    def synchronize(self) -> None:
        """Wait for the device's queued work (a no-op on CPU), so a wall-clock time covers it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def set_up_worker(
    work: WorkerSpec, rank: int, world: int, device: torch.device, weights: dict | None = None
) -> WorkerSetup:
    """Build this worker's data, method, supernet (from `weights`, else the method's initialisation) and optimiser.

    The optimiser starts at LR 0: the training loop sets every step's LR from its schedule.
    """
    torch.set_num_threads(work.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # a subnet's shapes repeat: the fastest kernels are worth finding
    space = build_space(work)
    method = build_method(work.method, space, work.seed)
    loader, sampler = distributed_train_loader(work, rank, world, device)
    torch.manual_seed(work.seed)
    classes = num_classes(work.dataset)
    net = build_supernet(work, space, classes)
    if weights is not None:
        net.load_state_dict(weights)
    else:
        method.init_weights(net)
    net = net.to(device, memory_format=torch.channels_last)
    return WorkerSetup(
        work=work,
        rank=rank,
        world=world,
        device=device,
        method=method,
        num_classes=classes,
        loader=loader,
        sampler=sampler,
        net=net,
        optimizer=build_optimizer(net, work.optimizer, 0.0),
        average_gradients=GradientAverager(net.parameters(), world),
        distill=build_distillation(method.distillation()),
        precision=MixedPrecision(work.precision, device),
    )
