"""A run's hold on its cluster's devices: since when it holds them, and the `DeviceHold` that records it."""

from __future__ import annotations

import os

from orchestrator.plan import Plan
from workers.rundir.holds import DeviceHold, HoldOwner

# Set by whatever started this process inside an allocation it holds already (the Slurm job): since when.
HELD_SINCE_ENV = "DEPS_ORCH_HELD_SINCE"


def held_since() -> float | None:
    """When this process's devices began to be held, if before it started (else: from now)."""
    value = os.environ.get(HELD_SINCE_ENV)
    return float(value) if value else None


def device_hold(plan: Plan, kind: str, since: float | None, devices: int | None = None) -> DeviceHold:
    """The plan's run holding `devices` (default: its training's) from `since` (default: now)."""
    alloc = plan.training
    owner = HoldOwner(
        run=plan.spec.run,
        method=plan.method,
        group=plan.spec.group,
        kind=kind,
        devices=alloc.devices if devices is None else devices,
        device_type=alloc.price.device_type,
        price_per_device_hour=alloc.price.per_device_hour,
    )
    return DeviceHold(plan.files, owner, since)
