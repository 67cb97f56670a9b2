"""Evaluating subnets: calibrate BN, then top-1/top-5 on the test split, data-parallel over shards.

Each of n evaluation workers holds one shard: every n-th calibration batch and
every n-th test image, decoded by the worker itself and kept as uint8 (on its
GPU when it has one), so no process holds the whole test set and memory per
worker shrinks as workers are added. A subnet is evaluated by all shards at
once, in two passes:

1. each shard calibrates BN on its batches and returns its statistics
   (`BatchNormStats`); with a cumulative average (momentum None) the statistics
   of all batches are the batch-weighted mean of the shards' - exactly, since a
   BN in training mode normalises with batch statistics, never running ones;
2. each shard loads the merged statistics and counts its correct predictions;
   the counts are summed.

`SubnetEvaluator` keeps one supernet and switches subnets in place. With one
shard (`evaluate`) it is the whole evaluation in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Subset

from workers.calibration import calibrate_bn
from workers.data.datasets import calibration_dataset, normalization, test_dataset, to_tensors
from workers.job import WorkerSpec
from workers.latency import Latency, LatencyTable, PredictionError, measure_latency, prediction_error
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SearchSpace, SubnetConfig
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: every count-th item, starting at index."""

    index: int = 0
    count: int = 1

    def take(self, items: int) -> list[int]:
        return list(range(self.index, items, self.count))


@dataclass(frozen=True)
class BatchNormStats:
    """Running statistics of the BN layers a subnet used, by module name: (mean, var) over `batches` batches."""

    stats: dict[str, tuple[torch.Tensor, torch.Tensor, int]]
    images: int

    @classmethod
    def of(cls, net: nn.Module, images: int) -> BatchNormStats:
        return cls(
            {
                name: (
                    m.running_mean.to("cpu", copy=True),
                    m.running_var.to("cpu", copy=True),
                    int(m.num_batches_tracked),
                )
                for name, m in _norms(net)
                if int(m.num_batches_tracked) > 0
            },
            images,
        )

    def load_into(self, net: nn.Module) -> None:
        for name, m in _norms(net):
            if name in self.stats:
                mean, var, batches = self.stats[name]
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.fill_(batches)
            else:
                m.reset_running_stats()


def merge_bn_stats(shards: Sequence[BatchNormStats]) -> BatchNormStats:
    """The statistics over every shard's batches: the batch-weighted mean of each shard's."""
    merged: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    for name in sorted({n for s in shards for n in s.stats}):
        parts = [s.stats[name] for s in shards if name in s.stats]
        batches = sum(b for _, _, b in parts)
        mean = sum(m.double() * b for m, _, b in parts) / batches
        var = sum(v.double() * b for _, v, b in parts) / batches
        merged[name] = (mean.float(), var.float(), batches)
    return BatchNormStats(merged, sum(s.images for s in shards))


@dataclass(frozen=True)
class Counts:
    """Correct top-1 and top-5 predictions of one shard, out of `images`."""

    top1: int
    top5: int
    images: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.top1 + other.top1, self.top5 + other.top5, self.images + other.images)

    def percent(self, num_classes: int) -> tuple[float, float | None]:
        """Top-1 and top-5 in percent (top-5 is None with 5 classes or fewer)."""
        return 100.0 * self.top1 / self.images, (100.0 * self.top5 / self.images if num_classes > 5 else None)


def _norms(net: nn.Module) -> Iterator[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return ((n, m) for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@torch.no_grad()
def count_correct(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> Counts:
    model.eval()
    top1 = top5 = n = 0
    for x, y in batches:
        ranked = model(x).topk(min(5, num_classes), dim=1).indices
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked == y[:, None]).any(dim=1).sum())
        n += y.numel()
    return Counts(top1, top5, n)


def subnet_row(
    space: SearchSpace,
    config: SubnetConfig,
    num_classes: int,
    counts: Counts,
    calibration_images: int,
    seconds: float,
    latency: Latency | None = None,
) -> dict:
    """A subnet's row of the subnet table (without the run's columns); `seconds` with the latency's own."""
    top1, top5 = counts.percent(num_classes)
    profile = profile_subnet(space, config, num_classes)
    timed = latency.columns() if latency is not None else dict.fromkeys(LATENCY_COLUMNS)
    return {
        "subnet_id": config.subnet_id,
        "config": config.to_json(),
        "resolution": config.resolution,
        "macs": profile.macs,
        "params": profile.params,
        "top1": top1,
        "top5": top5,
        "calibration_images": calibration_images,
        "test_images": counts.images,
        "eval_seconds": seconds + (latency.seconds if latency is not None else 0.0),
        **timed,
    }


LATENCY_COLUMNS = ("latency_ms", "latency_batch_size", "batch_latency_ms", "latency_device", "latency_threads")


class SubnetEvaluator:
    """One shard's supernet and data; `test_limit` keeps only the first test images (the forecast's timing)."""

    def __init__(
        self,
        spec: WorkerSpec,
        state_dict: dict,
        num_classes: int,
        threads: int,
        shard: Shard = Shard(),
        test_limit: int | None = None,
    ) -> None:
        torch.set_num_threads(threads)
        ev = spec.evaluation
        use_cuda = ev.gpus_per_worker > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda") if use_cuda else torch.device("cpu")
        self.spec, self.num_classes, self.shard = spec, num_classes, shard
        self.space = build_space(spec)
        self.net = build_supernet(spec, self.space, num_classes)
        self.net.load_state_dict(state_dict)
        self.net.to(self.device, memory_format=torch.channels_last)
        self.net.active_dropout = 0.0
        self.input = normalization(spec.dataset)
        workers = ev.loader_workers

        calibration = calibration_dataset(spec.dataset, ev.calibration_images)
        size = ev.calibration_batch_size
        batches = -(-len(calibration) // size)
        mine = [i for b in shard.take(batches) for i in range(b * size, min(len(calibration), (b + 1) * size))]
        self.calibration: list[torch.Tensor] = []
        if mine:
            images, _ = to_tensors(Subset(calibration, mine), size, workers)
            self.calibration = [x.to(self.device) for x in images.split(size)]

        test = test_dataset(spec.dataset)
        count = min(len(test), test_limit) if test_limit is not None else len(test)
        self.test: list[tuple[torch.Tensor, torch.Tensor]] = []
        picked = shard.take(count)
        if picked:
            images, labels = to_tensors(Subset(test, picked), ev.test_batch_size, workers)
            self.test = [
                (x.to(self.device), y.to(self.device))
                for x, y in zip(images.split(ev.test_batch_size), labels.split(ev.test_batch_size))
            ]

    def _model_input(self, batches: Iterable[torch.Tensor], resolution: int) -> Iterator[torch.Tensor]:
        """Model input at a subnet's own resolution (resized on the device from the size decoded)."""
        return (self.input.to_model_input(x, self.device, resolution) for x in batches)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def latency(self, configs: list[dict]) -> list[Latency]:
        """Each subnet's latency, extracted as a deployment would run it, on this worker's device."""
        out = []
        for data in configs:
            config = SubnetConfig.from_dict(data)
            self.net.set_active_subnet(config)
            subnet = self.net.get_active_subnet()
            out.append(measure_latency(subnet, config.resolution, self.device, self.spec.evaluation.latency))
        return out

    def latency_table(self, subnets: int = 20) -> tuple[LatencyTable, PredictionError]:
        """The supernet's per-block latency table on this worker's device, checked on `subnets` random subnets."""
        timing = self.spec.evaluation.latency
        table = LatencyTable.measure(self.net, self.space, self.device, timing.warmup, timing.repeats)
        error = prediction_error(
            table, self.net, self.space, self.device, subnets, self.spec.seed, timing.warmup, timing.repeats
        )
        return table, error

    def calibrate(self, configs: list[dict]) -> list[tuple[BatchNormStats, float]]:
        """Pass 1: each subnet's BN statistics on this shard's calibration batches, and the seconds it took."""
        out = []
        for data in configs:
            started = time.perf_counter()
            config = SubnetConfig.from_dict(data)
            self.net.set_active_subnet(config)
            seen = calibrate_bn(self.net, self._model_input(self.calibration, config.resolution))
            stats = BatchNormStats.of(self.net, seen)  # on the host: it travels to the driver
            self._synchronize()
            out.append((stats, time.perf_counter() - started))
        return out

    def count(self, configs: list[dict], stats: Sequence[BatchNormStats]) -> list[tuple[Counts, float]]:
        """Pass 2: with each subnet's merged statistics loaded, its correct predictions on this shard's test images."""
        out = []
        for data, merged in zip(configs, stats):
            started = time.perf_counter()
            config = SubnetConfig.from_dict(data)
            self.net.set_active_subnet(config)
            merged.load_into(self.net)
            batches = zip(self._model_input((x for x, _ in self.test), config.resolution), (y for _, y in self.test))
            counts = count_correct(self.net, batches, self.num_classes)
            self._synchronize()
            out.append((counts, time.perf_counter() - started))
        return out

    def evaluate(self, configs: list[dict]) -> list[dict]:
        """Both passes on this evaluator alone (one shard holds everything), with latency: the subnets' rows."""
        timed = self.spec.evaluation.latency.enabled
        rows = []
        for data, (stats, calibrating) in zip(configs, self.calibrate(configs)):
            ((counts, counting),) = self.count([data], [stats])
            config = SubnetConfig.from_dict(data)
            latency = self.latency([data])[0] if timed else None
            rows.append(
                subnet_row(self.space, config, self.num_classes, counts, stats.images, calibrating + counting, latency)
            )
        return rows
