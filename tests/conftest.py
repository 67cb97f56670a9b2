from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.ray_env import prepare_ray_environment

prepare_ray_environment()

REPO = Path(__file__).resolve().parents[1]


def deps_orch(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    exe = Path(sys.executable).with_name("deps-orch")
    return subprocess.run(
        [str(exe), *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


@contextmanager
def one_thread_float32() -> Iterator[None]:
    """Torch as a one-CPU training worker runs it, restored afterwards.

    Tiny tensors: one thread is fastest, and two spin-wait on each other on a busy 2-core machine.
    """
    import torch

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    with one_thread_float32():
        yield


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """Write a small DepS spec on the digits data into tmp_path; returns a function taking overrides."""
    import yaml

    def write(name: str = "tiny", **sections) -> Path:
        spec = {
            "run": name,
            "seed": 0,
            "dataset": {"name": "digits", "resolution": 16, "batch_size": 32, "train_subset": 512},
            "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
            "method": {
                "name": "deps",
                "epochs": 4,
                "warmup_fraction": 0.5,
                "eps_ramp_epochs": 1,
                "subnets_per_step": 3,
            },
            "optimizer": {"lr": 0.1, "lr_batch": 64},
            "cluster": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 3},
            "evaluation": {"subnets": 2, "calibration_images": 128, "calibration_batch_size": 64, "workers": 2},
            "storage": {"root": str(tmp_path / "runs")},
        }
        for key, value in sections.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write
