"""The embedded default: a local Ray cluster started by the CLI itself, bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from orchestrator.plan import Plan
from orchestrator.ray_env import prepare_ray_environment

METRICS_PORT_ENV = "DEPS_ORCH_METRICS_EXPORT_PORT"  # the local cluster's Prometheus metrics port


@contextmanager
def local_cluster(plan: Plan) -> Iterator[None]:
    prepare_ray_environment()
    cluster = plan.spec.cluster
    if cluster.expose_dashboard:
        from orchestrator.backends.launch import EXPOSE_WARNING

        print(f"deps-orch: warning: {EXPOSE_WARNING}", file=sys.stderr)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=cluster.gpus_per_worker * cluster.num_workers,
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls.
        include_dashboard=True,
        dashboard_host="0.0.0.0" if cluster.expose_dashboard else "127.0.0.1",
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
        # Prometheus scrapes a fixed port; Ray picks a free one unless told.
        _metrics_export_port=int(os.environ[METRICS_PORT_ENV]) if os.environ.get(METRICS_PORT_ENV) else None,
    )
    # ray.init replaces SIGTERM handling (its core worker aborts the process); keep the caller's,
    # so that a SIGTERM stops the run cleanly and leaves it resumable.
    if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        ray.shutdown()
