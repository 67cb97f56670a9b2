"""Backends provide the Ray cluster a plan runs on.

`local` starts a Ray cluster in this process. `slurm` and `ray` run the plan
somewhere else (a Slurm allocation, an existing Ray cluster): `launch` sends
it there and follows it, and the driver over there runs the same stages inside
`attached_cluster`. Imports are lazy: the plan module uses `sbatch` from here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.plan import Plan


def backend_for(plan: Plan) -> AbstractContextManager[None]:
    """The cluster context for running a plan's stages in this process."""
    backend = plan.spec.cluster.backend
    if backend == "local":
        from orchestrator.backends.local import local_cluster

        return local_cluster(plan)
    if backend in ("slurm", "ray"):
        # Only drivers (inside the allocation, inside a Ray job, or on a cluster node) run stages for these.
        from orchestrator.backends.attached import attached_cluster

        return attached_cluster(plan)
    raise ValueError(f"unknown backend {backend!r}")
