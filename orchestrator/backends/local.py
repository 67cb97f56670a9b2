"""The embedded default: a Ray cluster started by `deps-orch submit` itself, on this machine, bound to 127.0.0.1.

Every local cluster keeps its files in a temporary directory of its own
(`RAY_TMPDIR`, which Ray's processes inherit): its sockets, its logs and the
"current cluster" file through which Ray Train's own actors find the state API.
Two runs submitted at once on one machine therefore each start and use their own
cluster, and neither attaches to the other's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from orchestrator.backends.base import Backend, Echo
from orchestrator.plan import Plan
from orchestrator.ray_env import prepare_ray_environment
from orchestrator.runner import Submission, run_here

METRICS_PORT_ENV = "DEPS_ORCH_METRICS_EXPORT_PORT"  # the local cluster's Prometheus metrics port
# Ray Train's preemption watcher (an actor per run) polls Ray for nodes an autoscaler drains; nothing drains
# this machine, so a local run starts without it (Ray Train hands the setting on to its controller).
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
EXPOSE_WARNING = (
    "cluster.expose_dashboard: the Ray dashboard listens on all interfaces; its Jobs API runs arbitrary code "
    "as this user for anyone who can reach the port and holds the token. Use it only on a trusted network."
)


class LocalBackend(Backend):
    name = "local"
    measures_dry_run = True
    hold_kind = "local cluster"

    def describe(self, plan: Plan) -> dict:
        where = "all interfaces (cluster.expose_dashboard)" if self.spec.cluster.expose_dashboard else "127.0.0.1"
        return {"ray": f"a local cluster started by deps-orch on this machine; dashboard on {where}"}

    def launch(self, submission: Submission, echo: Echo) -> int:
        return run_here(submission, self.cluster(), self.hold_kind)

    def cluster(self) -> AbstractContextManager[None]:
        return local_cluster(self.spec)


@contextmanager
def local_cluster(spec) -> Iterator[None]:
    import ray

    prepare_ray_environment()
    cluster = spec.cluster
    if cluster.expose_dashboard:
        print(f"deps-orch: warning: {EXPOSE_WARNING}", file=sys.stderr)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    own_dir = tempfile.mkdtemp(prefix="deps-ray-")  # short: Ray's socket paths live under it
    previous = {name: os.environ.get(name) for name in ["RAY_TMPDIR", *LOCAL_RAY_TRAIN_ENV]}
    os.environ["RAY_TMPDIR"] = own_dir
    for name, value in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(name, value)  # the user's own setting wins
    try:
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            num_gpus=cluster.gpus_per_worker * cluster.num_workers,
            # The dashboard also serves the state API that Ray Train's placement-group cleaner polls.
            include_dashboard=True,
            dashboard_host="0.0.0.0" if cluster.expose_dashboard else "127.0.0.1",
            _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(own_dir, "ray"),
            logging_level=logging.WARNING,
            log_to_driver=True,
            # Prometheus scrapes a fixed port; Ray picks a free one unless told.
            _metrics_export_port=int(os.environ[METRICS_PORT_ENV]) if os.environ.get(METRICS_PORT_ENV) else None,
        )
        # ray.init replaces SIGTERM handling (its core worker aborts the process); keep the caller's,
        # so that a SIGTERM stops the run cleanly and leaves it resumable.
        if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
        # Ray Train's own actors (its state actor, its placement-group cleaner) find the state API through
        # the "current cluster" file, which only `ray start` writes: write this cluster's, in its own directory.
        from ray._common.utils import get_ray_address_file

        with open(get_ray_address_file(os.path.join(own_dir, "ray")), "w") as file:
            file.write(ray.get_runtime_context().gcs_address)
        yield
        failed = False
    except BaseException:
        failed = True  # Ray's logs stay in the cluster's directory
        raise
    finally:
        ray.shutdown()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not failed:
            shutil.rmtree(own_dir, ignore_errors=True)
