"""A driver joining a Ray cluster that runs already: in a Slurm allocation, in a Ray job, or on a cluster node.

The cluster is not ours to stop: leaving only disconnects this driver.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from orchestrator.ray_env import prepare_ray_environment

# Set by the Slurm job for its driver: how many nodes must have joined before training starts.
EXPECTED_NODES_ENV = "DEPS_ORCH_EXPECTED_NODES"
NODES_TIMEOUT_ENV = "DEPS_ORCH_NODES_TIMEOUT"


def _wait_for_nodes(expected: int, timeout: float) -> None:
    deadline = time.time() + timeout
    alive = 0
    while time.time() < deadline:
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= expected:
            return
        time.sleep(1.0)
    raise RuntimeError(f"only {alive} of {expected} nodes joined the Ray cluster within {timeout:.0f}s")


@contextmanager
def attached_cluster() -> Iterator[None]:
    prepare_ray_environment()
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.WARNING, log_to_driver=True)
    # ray.init replaces SIGTERM handling; keep the caller's, so SIGTERM leaves the run INTERRUPTED and resumable.
    if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        expected = int(os.environ.get(EXPECTED_NODES_ENV, "0"))
        if expected > 1:
            _wait_for_nodes(expected, float(os.environ.get(NODES_TIMEOUT_ENV, "300")))
        yield
    finally:
        ray.shutdown()
