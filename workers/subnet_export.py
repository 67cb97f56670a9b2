"""A deployable subnet: extracted from the trained supernet with BN calibrated as evaluation does, then written
as TorchScript, ONNX or a plain state dict.

The file takes what the supernet takes: float32 NCHW images at the subnet's
resolution, normalised with the dataset's mean and std (the sidecar says which).
Calibration uses the same images in the same batches as the evaluation workers
(all shards in one process: the same cumulative average), so the exported net's
BN statistics are the ones its top-1 was measured with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from workers.evaluation import SubnetEvaluator
from workers.job import WorkerSpec
from workers.supernet.space import SubnetConfig


def calibrated_subnet(
    spec: WorkerSpec, state_dict: dict, config: SubnetConfig, num_classes: int, threads: int = 1
) -> nn.Module:
    """The standalone subnet (plain modules, eval mode, on the CPU) with its BN statistics calibrated."""
    evaluator = SubnetEvaluator(spec, state_dict, num_classes, threads, test_limit=0)
    evaluator.calibrate([config.to_dict()])  # leaves the statistics in the supernet's active BN slices
    return evaluator.net.get_active_subnet().to("cpu", memory_format=torch.contiguous_format).eval()


def example_input(config: SubnetConfig, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(0))


def write_subnet(module: nn.Module, config: SubnetConfig, fmt: str, path: Path) -> None:
    """Write `module` to `path` in `fmt` (torchscript, onnx or state_dict), atomically (a temporary file beside
    it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # TorchScript is deprecated in favour of torch.export, which deployment runtimes do not load yet.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(module, example_input(config), check_trace=False), str(tmp))
            elif fmt == "onnx":
                torch.onnx.export(
                    module,
                    (example_input(config),),
                    str(tmp),
                    input_names=["image"],
                    output_names=["logits"],
                    dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                    dynamo=False,
                )
            elif fmt == "state_dict":
                torch.save(module.state_dict(), tmp)
            else:
                raise ValueError(f"unknown export format {fmt!r}; allowed: torchscript, onnx, state_dict")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per image, over convolutions and linear layers (OFA's convention)."""
    total = 0

    def conv(m: nn.Conv2d, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kernel = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.shape[1] * out.shape[2] * out.shape[3] * kernel

    def linear(m: nn.Linear, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
