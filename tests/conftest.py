from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ray_env import prepare_ray_environment

prepare_ray_environment()

REPO = Path(__file__).resolve().parents[1]


def deps_orch(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    exe = Path(sys.executable).with_name("deps-orch")
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | (env or {}),
    )


def deps_orch_in_background(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The installed CLI running while the test watches it; stdout and stderr together."""
    exe = Path(sys.executable).with_name("deps-orch")
    return subprocess.Popen(
        [str(exe), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | (env or {}),
    )


@dataclass(frozen=True)
class SharedCluster:
    """A Ray head that runs for the whole session, like one on a cloud or KubeRay cluster.

    Specs reach it with `cluster: {backend: ray, address: auto}` and `env` (the CLI attaches to RAY_ADDRESS),
    or through its Jobs API at `dashboard`. Token authentication is on; the dashboard listens on 127.0.0.1.
    """

    address: str  # the GCS address
    dashboard: str  # the dashboard's URL (and the Jobs API's)

    @property
    def env(self) -> dict[str, str]:
        return {"RAY_ADDRESS": self.address}

    CLUSTER = {"backend": "ray", "address": "auto"}


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[SharedCluster]:
    from orchestrator.backends.ray_node import free_port, session_members, start_command, start_node

    base = Path(tempfile.mkdtemp(prefix="deps-ray-tests-"))  # short: Ray's socket paths live under it
    port, dashboard_port = free_port(), free_port()
    command = start_command(
        head_address=None,
        port=port,
        num_cpus=os.cpu_count() or 2,
        num_gpus=0,
        expose_dashboard=False,
        temp_dir=base / "ray",
        node_ip="127.0.0.1",
        dashboard_port=dashboard_port,
    )
    # Ray's processes find their own cluster's files (and Ray Train its state API) under RAY_TMPDIR.
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(base)
    try:
        node = start_node(command, base / "head.log")
    finally:
        if previous is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = previous
    try:
        node.wait_ready(180)
        yield SharedCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
        assert not session_members(node.session)


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
    """Write a small DepS spec on the digits data into tmp_path; returns a function taking overrides.

    Its forecast times 2 steps a phase (after 1 untimed) and it takes no diagnostics: the tests of those ask for them.
    """
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
            "evaluation": {
                "subnets": 2,
                "calibration_images": 128,
                "calibration_batch_size": 64,
                "workers": 2,
                "diagnostics": {"enabled": False},
            },
            "forecast": {"steps": 2, "max_steps": 2, "warmup_steps": 1},
            "storage": {"root": str(tmp_path / "runs")},
        }
        for key, value in sections.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write
