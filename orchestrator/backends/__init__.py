"""Backends provide the Ray cluster a plan runs on."""

from __future__ import annotations

from contextlib import AbstractContextManager

from orchestrator.backends.local import local_cluster
from orchestrator.plan import Plan

BACKENDS = {"local": local_cluster}


def backend_for(plan: Plan) -> AbstractContextManager[None]:
    return BACKENDS[plan.spec.cluster.backend](plan)
