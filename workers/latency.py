"""Inference latency of an extracted subnet on the device that measures it, and a per-block lookup table.

`measure_latency` times the standalone module a deployment would run (no slicing,
eval mode, channels-last): `warmup` untimed calls, then the median of `repeats`
timed ones, CUDA-synchronised on a GPU, at batch 1 and at the spec's batch. The
device's name and the torch threads go with the figure: a latency means nothing
without them.

`LatencyTable` is OFA's lookup table measured on the user's device: every block
position timed once per (kernel, expand ratio, resolution) choice, the fixed parts
(stem, first block, head) once per resolution; a subnet's predicted latency is the
sum of its parts. It predicts without building the subnet, so a search can screen
thousands of candidates; `prediction_error` compares it with measured latency.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from workers.evaluation_spec import LatencySpec
from workers.rundir.layout import write_json
from workers.supernet.space import SearchSpace, SubnetConfig


@dataclass(frozen=True)
class Latency:
    """A subnet's median latency in milliseconds at batch 1 and at `batch_size`, and where it was measured."""

    ms: float
    batch_size: int
    batch_ms: float
    device: str
    threads: int
    seconds: float  # the time the measurement itself took

    def columns(self) -> dict:
        """Its columns in the subnet table."""
        return {
            "latency_ms": self.ms,
            "latency_batch_size": self.batch_size,
            "batch_latency_ms": self.batch_ms,
            "latency_device": self.device,
            "latency_threads": self.threads,
        }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def median_ms(
    model: nn.Module,
    example: torch.Tensor,
    warmup: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The median milliseconds of `model(example)` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        model(example)
    _synchronize(example.device)
    times = []
    for _ in range(repeats):
        started = clock()
        model(example)
        _synchronize(example.device)
        times.append(clock() - started)
    return 1000.0 * statistics.median(times)


def _example(batch: int, channels: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)


def measure_latency(
    model: nn.Module,
    resolution: int,
    device: torch.device,
    spec: LatencySpec,
    clock: Callable[[], float] = time.perf_counter,
) -> Latency:
    """The latency of `model` (a standalone subnet) on `device` at its input resolution."""
    started = time.perf_counter()
    model = model.eval().to(device, memory_format=torch.channels_last)
    single = median_ms(model, _example(1, 3, resolution, device), spec.warmup, spec.repeats, clock)
    batch = median_ms(model, _example(spec.batch_size, 3, resolution, device), spec.warmup, spec.repeats, clock)
    return Latency(
        single, spec.batch_size, batch, device_name(device), torch.get_num_threads(), time.perf_counter() - started
    )


@dataclass(frozen=True)
class TableEntry:
    part: str  # "fixed" (stem, first block, head) or "s<stage>b<block>"
    resolution: int
    kernel: int
    expand: float
    ms: float


class LatencyTable:
    """Per-part latencies of one supernet at batch 1 on one device; a subnet's prediction is their sum."""

    def __init__(self, entries: Sequence[TableEntry], device: str, threads: int) -> None:
        self.device, self.threads = device, threads
        self.entries = {(e.part, e.resolution, e.kernel, e.expand): e.ms for e in entries}

    @classmethod
    def measure(
        cls,
        net: nn.Module,
        space: SearchSpace,
        device: torch.device,
        warmup: int = 5,
        repeats: int = 20,
        resolutions: Sequence[int] | None = None,
    ) -> LatencyTable:
        """Time every block position of `net` (an `ElasticSupernet`) with each (kernel, expand) choice.

        Each block is timed as its own extracted module, on an input of the shape it gets in a subnet;
        the fixed parts are the largest subnet's time minus its blocks'.
        """
        net = net.eval().to(device, memory_format=torch.channels_last)
        entries: list[TableEntry] = []
        for resolution in resolutions or space.resolutions:
            largest = SubnetConfig(space.largest().stages, resolution)
            net.set_active_subnet(largest)
            inputs = _block_inputs(net, _example(1, 3, resolution, device))
            blocks_ms = 0.0
            for s, stage in enumerate(net.stages):
                for b, block in enumerate(stage):
                    x = inputs[block]
                    for kernel in space.kernel_choices:
                        for expand in space.expand_choices:
                            block.set_active(kernel, expand)
                            ms = median_ms(block.export().eval(), x, warmup, repeats)
                            entries.append(TableEntry(f"s{s}b{b}", resolution, kernel, expand, ms))
                    block.set_active(largest.stages[s].kernels[b], largest.stages[s].expands[b])
                    blocks_ms += next(
                        e.ms
                        for e in entries
                        if (e.part, e.resolution, e.kernel, e.expand)
                        == (f"s{s}b{b}", resolution, largest.stages[s].kernels[b], largest.stages[s].expands[b])
                    )
            whole = median_ms(net.get_active_subnet().eval(), _example(1, 3, resolution, device), warmup, repeats)
            entries.append(TableEntry("fixed", resolution, 0, 0.0, max(0.0, whole - blocks_ms)))
        return cls(entries, device_name(device), torch.get_num_threads())

    def predict(self, config: SubnetConfig) -> float:
        """The predicted batch-1 latency of a subnet in milliseconds; KeyError for a choice not in the table."""
        ms = self.entries[("fixed", config.resolution, 0, 0.0)]
        for s, stage in enumerate(config.stages):
            for b, (kernel, expand) in enumerate(zip(stage.kernels, stage.expands)):
                ms += self.entries[(f"s{s}b{b}", config.resolution, kernel, float(expand))]
        return ms

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "threads": self.threads,
            "entries": [asdict(TableEntry(p, r, k, e, ms)) for (p, r, k, e), ms in sorted(self.entries.items())],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls([TableEntry(**e) for e in data["entries"]], data["device"], data["threads"])

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        return cls.from_dict(json.loads(path.read_text()))


def _block_inputs(net: nn.Module, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """Each stage block's input with the active (largest) subnet, by block."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    with torch.inference_mode():
        x = net.first_block(net.stem(x))
        for stage in net.stages:
            for block in stage:
                inputs[block] = x.clone()
                x = block(x)
    return inputs


@dataclass(frozen=True)
class PredictionError:
    subnets: int
    mean_abs_pct: float
    max_abs_pct: float
    pairs: tuple[tuple[str, float, float], ...]  # (subnet id, predicted ms, measured ms)


def prediction_error(
    table: LatencyTable,
    net: nn.Module,
    space: SearchSpace,
    device: torch.device,
    subnets: int = 20,
    seed: int = 0,
    warmup: int = 5,
    repeats: int = 20,
) -> PredictionError:
    """The table's predictions for `subnets` random subnets against their measured batch-1 latency."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(subnets):
        config = space.sample(rng)
        net.set_active_subnet(config)
        measured = median_ms(net.get_active_subnet().eval(), _example(1, 3, config.resolution, device), warmup, repeats)
        pairs.append((config.subnet_id, table.predict(config), measured))
    errors = [abs(p - m) / m * 100.0 for _, p, m in pairs]
    return PredictionError(len(pairs), statistics.fmean(errors), max(errors), tuple(pairs))
