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
from torch.utils.data import DataLoader

from workers.data.datasets import normalization, num_classes
from workers.data.device_input import Normalization
from workers.data.train_loader import EpochTaggedSampler, distributed_train_loader
from workers.distillation import DistillationLoss, build_distillation
from workers.job import WorkerSpec
from workers.methods import TrainingMethod, build_method
from workers.optim import build_optimizer
from workers.precision import MixedPrecision
from workers.step import GradientAverager
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import ElasticSupernet, build_supernet


@dataclass
class WorkerSetup:
    work: WorkerSpec
    rank: int
    world: int
    device: torch.device
    method: TrainingMethod
    num_classes: int
    loader: DataLoader
    sampler: EpochTaggedSampler
    net: ElasticSupernet
    optimizer: torch.optim.Optimizer
    average_gradients: GradientAverager
    distill: DistillationLoss
    precision: MixedPrecision
    input: Normalization

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def global_batch(self) -> int:
        return self.work.dataset.batch_size * self.world

    def on_device(
        self, images: torch.Tensor, labels: torch.Tensor, resolution: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's uint8 batch as normalised model input on the device (resized to `resolution`), and labels."""
        return self.input.to_model_input(images, self.device, resolution), labels.to(self.device, non_blocking=True)

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
    loader, sampler = distributed_train_loader(work.dataset, work.seed, rank, world, device.type == "cuda")
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
        input=normalization(work.dataset),
    )
