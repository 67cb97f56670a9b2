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
        with _current_cluster_pointer(ray.get_runtime_context().gcs_address):
            yield
    finally:
        ray.shutdown()


@contextmanager
def _current_cluster_pointer(gcs_address: str) -> Iterator[None]:
    """Point Ray's "current cluster" file at this cluster while it runs, then put back what was there.

    Ray Train's own actors (its state actor, its placement-group cleaner) find the
    state API through that file, which only `ray start` writes. A file left behind
    by an earlier `ray start` whose cluster is gone makes each of their calls wait
    for a GCS that never answers: tens of seconds at the end of every training job.
    """
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as file:
            previous: str | None = file.read()
    except OSError:
        previous = None
    with open(path, "w") as file:
        file.write(gcs_address)
    try:
        yield
    finally:
        try:
            if previous is None:
                os.remove(path)
            else:
                with open(path, "w") as file:
                    file.write(previous)
        except OSError:
            pass
