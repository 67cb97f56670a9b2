"""Backends, looked up by the spec's `cluster.backend`: `local` (the embedded default), `slurm` and `ray`.

Each is a `Backend` (`orchestrator/backends/base.py`) in its own module, imported
only when a spec names it: the Slurm and Ray-cluster backends need packages and
connections a laptop run never touches.
"""

from __future__ import annotations

import importlib

from orchestrator.backends.base import Backend
from orchestrator.plan import Plan
from orchestrator.spec import JobSpec

BACKENDS: dict[str, str] = {
    "local": "orchestrator.backends.local:LocalBackend",
    "slurm": "orchestrator.backends.slurm:SlurmBackend",
    "ray": "orchestrator.backends.ray_cluster:RayClusterBackend",
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_for(spec: JobSpec) -> Backend:
    return backend_class(spec.cluster.backend)(spec)


def describe_plan(plan: Plan) -> dict:
    """The plan as `--dry-run` prints it and plan.json keeps it, with its backend's part of the cluster section."""
    described = plan.describe()
    described["cluster"].update(backend_for(plan.spec).describe(plan))
    return described
