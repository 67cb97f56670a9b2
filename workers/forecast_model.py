"""From a measured profile to a forecast: seconds, device-hours and dollars per phase, for evaluation and in total.

The profile (`workers/profiling.py`) times a run's work on its own workers; the
basis is the plan's side of the arithmetic as plain values (epochs per phase,
steps per epoch, devices and prices, the planned subnets' MACs), so the workers
that measured the profile can make the forecast themselves.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone

from workers.profiling import Profile, ProfileRequest
from workers.rundir.forecast import Forecast, PhaseForecast
from workers.rundir.pricing import Usage


@dataclass(frozen=True)
class ForecastBasis:
    run: str
    method: str
    fingerprint: str  # of everything in the plan that drives cost
    phases: tuple[tuple[str, int, int], ...]  # (phase, first epoch, last epoch)
    steps_per_epoch: int
    devices: int
    device_type: str
    price_per_device_hour: float
    training_jobs: int
    eval_subnet_macs: tuple[int, ...]  # the planned subnets'
    eval_subnets: int  # how many will be evaluated in all (a search evaluates more than it plans at first)
    eval_workers: int
    eval_devices: float  # the run's held devices per evaluation worker (at least the worker's own)
    eval_price_per_device_hour: float


@dataclass(frozen=True)
class ForecastJob:
    """Measure the forecast in a training job's own worker group, before its first epoch."""

    request: ProfileRequest
    basis: ForecastBasis


def _eval_seconds(basis: ForecastBasis, profile: Profile) -> float:
    """The summed calibration + evaluation seconds of every subnet: a line through the timed subnets' MACs."""
    planned = basis.eval_subnet_macs
    if not planned or not profile.evaluations:
        return 0.0
    points = sorted((e.macs, e.full_seconds) for e in profile.evaluations)
    (m0, s0), (m1, s1) = points[0], points[-1]
    slope = (s1 - s0) / (m1 - m0) if m1 > m0 and s1 >= s0 else 0.0
    base = s0 if slope > 0 else statistics.mean(s for _, s in points)
    per_subnet = [base + slope * (macs - m0) for macs in planned]
    return sum(per_subnet) + statistics.mean(per_subnet) * max(0, basis.eval_subnets - len(planned))


def forecast_from_profile(
    basis: ForecastBasis,
    profile: Profile,
    measure_seconds: float = 0.0,
    measured_in_run: bool = False,
    held_since: float | None = None,
) -> Forecast:
    """`held_since`: when the devices began to be held (a Unix time): the start-up is from then until the
    workers began their set-up (the cluster's start, the controller, the worker group's launch)."""
    timings = {p.phase: p for p in profile.phases}
    steps = basis.steps_per_epoch
    phases = []
    for name, first, last in basis.phases:
        timing = timings[name]
        epoch_seconds = steps * timing.median_step_seconds + profile.epoch_fixed_seconds
        epochs = last - first + 1
        usage = Usage.of(epochs * epoch_seconds, basis.devices, basis.price_per_device_hour)
        phases.append(
            PhaseForecast(
                name,
                first,
                epochs,
                timing.median_step_seconds,
                timing.subnets_per_step,
                epoch_seconds,
                usage.device_hours,
                usage.dollars,
            )
        )
    # The first step of an attempt pays for allocations the later ones reuse: part of its set-up.
    first = profile.phases[0] if profile.phases else None
    first_extra = max(0.0, first.first_step_seconds - first.median_step_seconds) if first is not None else 0.0
    return Forecast(
        run=basis.run,
        method=basis.method,
        fingerprint=basis.fingerprint,
        measured_at=datetime.now(timezone.utc).isoformat(),
        measure_seconds=measure_seconds,
        devices=basis.devices,
        device_type=basis.device_type,
        price_per_device_hour=basis.price_per_device_hour,
        steps_per_epoch=steps,
        setup_seconds=profile.setup_seconds + first_extra,
        training_jobs=max(1, basis.training_jobs),
        epoch_fixed_seconds=profile.epoch_fixed_seconds,
        phases=phases,
        eval_subnets=basis.eval_subnets,
        eval_seconds=_eval_seconds(basis, profile),
        eval_workers=basis.eval_workers,
        eval_devices=basis.eval_devices,
        eval_price_per_device_hour=basis.eval_price_per_device_hour,
        profile=profile.to_dict(),
        measured_in_run=measured_in_run,
        startup_seconds=max(0.0, profile.started_at - held_since) if held_since and profile.started_at else 0.0,
        diagnostics_seconds=profile.diagnostics_seconds,
        # Evaluation workers start as training workers do (a process, the data, the supernet): the same set-up.
        eval_setup_seconds=profile.setup_seconds if basis.eval_subnets else 0.0,
    )
