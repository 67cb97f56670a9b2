"""The forecast's measurement: what to time, and when a run needs it timed.

A run's forecast is measured inside its first training job, on that job's own
workers before its first epoch (`workers/training_loop.py`), so a run starts Ray
Train workers once. A resubmitted run reuses its recorded forecast as long as
nothing that drives cost changed. `submit --dry-run` has no training job: it
measures the same in a short Ray Train job of its own, built like the training
job (the same worker group, process group and Train control plane), whose rank 0
hands its profile back as the job's checkpoint, deleted once read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import ray.train
import ray.train.torch

from orchestrator.plan import Plan
from orchestrator.storage.discovery import runs_in_group
from orchestrator.training_job import torch_trainer
from workers.forecast_model import ForecastJob, forecast_from_profile
from workers.profiling import PhaseTiming, Profile, ProfileRequest, profile_worker
from workers.rundir.forecast import Forecast, load_forecast
from workers.training_loop import quiet_ray_train_logs

PROFILE_FILE = "profile.json"


def profile_request(plan: Plan, known: tuple[PhaseTiming, ...] = ()) -> ProfileRequest:
    """Every phase at its first epoch, timed until its median settles; the smallest and largest planned subnets
    for evaluation. `known`: timings of identical work measured before, which need no timing again."""
    eval_subnets: tuple[str, ...] = ()
    if plan.subnets:
        by_macs = [c for _, c in sorted(zip(plan.subnet_macs, plan.subnets), key=lambda pair: pair[0])]
        ends = [by_macs[0], by_macs[-1]] if len(by_macs) > 1 else [by_macs[0]]
        eval_subnets = tuple(c.to_json() for c in ends)
    forecast = plan.spec.forecast
    return ProfileRequest(
        work=plan.work,
        phases=tuple((phase, first) for phase, first, _ in plan.phases),
        steps=forecast.steps,
        eval_subnets=eval_subnets,
        warmup_steps=forecast.warmup_steps,
        max_steps=forecast.max_steps,
        max_seconds=forecast.max_seconds,
        tolerance=forecast.tolerance,
        known=known,
    )


def measured_phases(forecast: Forecast | None, run: str) -> tuple[PhaseTiming, ...]:
    """The phases a forecast timed itself, as known work for another run's measurement."""
    if forecast is None or not forecast.profile:
        return ()
    timings = [PhaseTiming(**p) for p in forecast.profile.get("phases", [])]
    return tuple(replace(t, reused_from=f"{run}/{t.phase}") for t in timings if t.work_key and not t.reused_from)


def group_measurements(plan: Plan) -> tuple[PhaseTiming, ...]:
    """What the other runs of the plan's comparison group measured (the same work is not timed twice)."""
    if plan.spec.group is None:
        return ()
    known: list[PhaseTiming] = []
    for run_dir in runs_in_group(plan.run_dir.parent, plan.spec.group):
        if run_dir.resolve() != plan.run_dir.resolve():
            known += measured_phases(load_forecast(run_dir), run_dir.name)
    return tuple(known)


def forecast_job(plan: Plan) -> ForecastJob | None:
    """What the run's first training job must measure, or None if its recorded forecast still fits the plan."""
    recorded = load_forecast(plan.files)
    if recorded is not None and recorded.fingerprint == plan.fingerprint():
        return None
    return ForecastJob(profile_request(plan, group_measurements(plan)), plan.forecast_basis())


def profile_loop_per_worker(config: dict) -> None:
    """Every worker times the request; rank 0 reports its profile as the checkpoint."""
    quiet_ray_train_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    profile = profile_worker(config["request"], rank, world, ray.train.torch.get_device())
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            (Path(directory) / PROFILE_FILE).write_text(json.dumps(profile.to_dict()))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"world": world}, checkpoint=checkpoint)


def measure_alone(
    plan: Plan, storage: Path, known: tuple[PhaseTiming, ...] = (), held_since: float | None = None
) -> Forecast:
    """Time the run's work in a job of its own (the Ray cluster must be up); `storage` is emptied afterwards.
    `held_since`: when the devices the run would hold began to be (default: now, the job's launch)."""
    held_since = held_since if held_since is not None else time.time()
    started = time.perf_counter()
    name = f"{plan.spec.run}.forecast-{time.strftime('%Y%m%d-%H%M%S')}"
    request = profile_request(plan, known)
    trainer = torch_trainer(plan, profile_loop_per_worker, {"request": request}, name, storage, max_failures=0)
    try:
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("forecast: the measuring job ended without its profile")
        with result.checkpoint.as_directory() as directory:
            profile = Profile.from_dict(json.loads((Path(directory) / PROFILE_FILE).read_text()))
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
    return forecast_from_profile(plan.forecast_basis(), profile, time.perf_counter() - started, held_since=held_since)


def dry_run_forecasts(plans: list[Plan], cluster: AbstractContextManager | None) -> list[dict | str]:
    """`submit --dry-run`: each plan's forecast, measured on `cluster` (started for it and stopped after).

    Without a cluster to start (a backend whose workers are elsewhere) each forecast says when it will be
    measured. Nothing is written: the forecasts are only printed.
    """
    if cluster is None:
        backend = plans[0].spec.cluster.backend
        return [f"measured on the {backend} cluster's workers when the run is submitted"] * len(plans)
    measured: list[dict | str] = []
    storage = Path(tempfile.mkdtemp(prefix="deps-orch-forecast-"))
    try:
        known: tuple[PhaseTiming, ...] = ()
        cluster_started = time.time()  # a run's hold starts before its cluster; in a comparison, the first run's
        with cluster:
            for index, plan in enumerate(plans):
                forecast = measure_alone(plan, storage, known, cluster_started if index == 0 else None)
                known += measured_phases(forecast, plan.spec.run)
                measured.append(forecast.summary())
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return measured
