"""The embedded default: a local Ray cluster started by the CLI itself, bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from orchestrator.plan import Plan
from orchestrator.ray_env import prepare_ray_environment


@contextmanager
def local_cluster(plan: Plan) -> Iterator[None]:
    prepare_ray_environment()
    cluster = plan.spec.cluster
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=cluster.gpus_per_worker * cluster.num_workers,
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    # ray.init replaces SIGTERM handling (its core worker aborts the process); keep the caller's,
    # so that a SIGTERM stops the run cleanly and leaves it resumable.
    if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        ray.shutdown()
