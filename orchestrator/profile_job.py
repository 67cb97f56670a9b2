"""The forecast's measurement: a run's work timed as a Ray Train job on the run's own workers.

The job is the training job's twin (`orchestrator/training_job.py::torch_trainer`):
the same worker group, process group (gloo on CPU, NCCL on GPU) and Ray Train
control plane around it, so the timed steps pay what the training steps will pay,
the gradient all-reduce and the contention of a full node included. The timing
itself is `workers/profiling.py`; rank 0 hands its profile back as the job's
checkpoint, which is deleted once read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.forecast import (
    Forecast,
    describe_forecast,
    forecast_from_profile,
    load_forecast,
    plan_fingerprint,
    save_forecast,
)
from orchestrator.plan import Plan
from orchestrator.storage.run_store import RunStore
from workers.profiling import Profile, ProfileRequest
from workers.supernet.factory import build_space
from workers.supernet.profile import profile_subnet

PROFILE_FILE = "profile.json"


def profile_request(plan: Plan, steps: int) -> ProfileRequest:
    """Every phase at its first epoch; the smallest and largest planned subnets for evaluation."""
    eval_subnets: tuple[str, ...] = ()
    if plan.subnets:
        space = build_space(plan.spec)
        by_macs = sorted(plan.subnets, key=lambda c: profile_subnet(space, c, plan.dataset.num_classes).macs)
        ends = [by_macs[0], by_macs[-1]] if len(by_macs) > 1 else [by_macs[0]]
        eval_subnets = tuple(c.to_json() for c in ends)
    return ProfileRequest(
        spec=plan.spec,
        phases=tuple((phase, first) for phase, first, _ in plan.phases),
        steps=steps,
        eval_subnets=eval_subnets,
    )


def profile_loop_per_worker(config: dict) -> None:
    """Every worker times the request; rank 0 reports its profile as the checkpoint."""
    import ray.train
    import ray.train.torch

    from workers.profiling import profile_worker
    from workers.training_loop import quiet_ray_train_logs

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


def measure_profile(plan: Plan, steps: int, storage: Path) -> Profile:
    """Time the run's work on its workers (the Ray cluster must be up); `storage` is emptied afterwards."""
    from orchestrator.training_job import torch_trainer

    name = f"{plan.spec.run}.forecast-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = torch_trainer(
        plan, profile_loop_per_worker, {"request": profile_request(plan, steps)}, name, storage, max_failures=0
    )
    try:
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("forecast: the measuring job ended without its profile")
        with result.checkpoint.as_directory() as directory:
            return Profile.from_dict(json.loads((Path(directory) / PROFILE_FILE).read_text()))
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)


def measure_forecast(plan: Plan, steps: int, storage: Path) -> Forecast:
    started = time.time()
    profile = measure_profile(plan, steps, storage)
    return forecast_from_profile(plan, profile, time.time() - started)


def ensure_forecast(plan: Plan, steps: int, echo: Callable[[str], None] = print) -> Forecast:
    """The run's recorded forecast if it still fits the plan, else a new measurement, recorded."""
    recorded = load_forecast(plan.run_dir)
    if recorded is not None and recorded.fingerprint == plan_fingerprint(plan):
        return recorded
    workers = plan.spec.cluster.num_workers
    echo(f"[{plan.spec.run}] measuring the forecast: {steps} steps of each phase on {workers} workers")
    forecast = measure_forecast(plan, steps, RunStore(plan.run_dir).ray_storage)
    save_forecast(plan.run_dir, forecast)
    echo(f"[{plan.spec.run}] {describe_forecast(forecast)}")
    return forecast


DRY_RUN_BACKENDS = ("local",)  # a dry run starts these clusters just to measure; others are measured at submit


def dry_run_forecasts(plans: list[Plan]) -> list[dict | str]:
    """`submit --dry-run`: each plan's forecast, measured on a cluster started for it and stopped after.

    Nothing is written: the forecast is only printed.
    """
    from orchestrator.backends import backend_for

    backend = plans[0].spec.cluster.backend
    if backend not in DRY_RUN_BACKENDS:
        return [f"measured on the {backend} cluster's workers when the run is submitted"] * len(plans)
    measured: list[dict | str] = []
    storage = Path(tempfile.mkdtemp(prefix="deps-orch-forecast-"))
    try:
        with backend_for(plans[0]):
            for plan in plans:
                measured.append(measure_forecast(plan, plan.spec.forecast.steps, storage).summary())
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return measured
