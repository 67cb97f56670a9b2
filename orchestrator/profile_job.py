"""The forecast's measurement: a run's work timed on actors placed and sized like its training workers.

One Ray actor per training worker, with the training workers' resources, placed
in one placement group packed as Ray Train packs its workers, joined into one
process group (gloo on CPU, NCCL on GPU), so the timed steps include the gradient
all-reduce and the contention of a full group. The timing itself is
`workers/profiling.py`. Cheaper than a Ray Train run: no trainer, no storage.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from orchestrator.forecast import (
    Forecast,
    describe_forecast,
    forecast_from_profile,
    load_forecast,
    plan_fingerprint,
    save_forecast,
)
from orchestrator.plan import Plan
from workers.profiling import Profile, ProfileRequest
from workers.supernet.factory import build_space
from workers.supernet.profile import profile_subnet

PLACEMENT_TIMEOUT_S = 120.0


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


class _ProfileWorker:
    """One training worker's stand-in, as a Ray actor."""

    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def run(self, request: ProfileRequest, rank: int, world: int, master: tuple[str, int], backend: str) -> dict:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        from workers.profiling import profile_worker

        if world > 1:
            dist.init_process_group(
                backend,
                init_method=f"tcp://{master[0]}:{master[1]}",
                rank=rank,
                world_size=world,
                timeout=timedelta(minutes=10),
            )
        device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            return profile_worker(request, rank, world, device).to_dict()
        finally:
            if world > 1:
                dist.destroy_process_group()


def measure_profile(plan: Plan, steps: int) -> Profile:
    """Time the run's work on workers like its training workers (the Ray cluster must be up)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cluster = plan.spec.cluster
    bundle = {"CPU": float(cluster.cpus_per_worker)}
    if cluster.uses_gpu:
        bundle["GPU"] = float(cluster.gpus_per_worker)
    group = placement_group([bundle] * cluster.num_workers, strategy="PACK")  # as Ray Train places its workers
    actors = []
    try:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise RuntimeError(
                f"forecast: the cluster cannot place {cluster.num_workers} workers of {bundle} "
                f"within {PLACEMENT_TIMEOUT_S:.0f}s"
            )
        worker_cls = ray.remote(num_cpus=cluster.cpus_per_worker, num_gpus=cluster.gpus_per_worker)(_ProfileWorker)
        actors = [
            worker_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
            ).remote()
            for i in range(cluster.num_workers)
        ]
        master = ray.get(actors[0].address.remote())
        backend = "nccl" if cluster.uses_gpu else "gloo"
        request = profile_request(plan, steps)
        results = ray.get([a.run.remote(request, rank, len(actors), master, backend) for rank, a in enumerate(actors)])
        return Profile.from_dict(results[0])
    finally:
        for actor in actors:
            ray.kill(actor)
        remove_placement_group(group)


def measure_forecast(plan: Plan, steps: int) -> Forecast:
    started = time.time()
    profile = measure_profile(plan, steps)
    return forecast_from_profile(plan, profile, time.time() - started)


def ensure_forecast(plan: Plan, steps: int, echo: Callable[[str], None] = print) -> Forecast:
    """The run's recorded forecast if it still fits the plan, else a new measurement, recorded."""
    recorded = load_forecast(plan.run_dir)
    if recorded is not None and recorded.fingerprint == plan_fingerprint(plan):
        return recorded
    workers = plan.spec.cluster.num_workers
    echo(f"[{plan.spec.run}] measuring the forecast: {steps} steps of each phase on {workers} workers")
    forecast = measure_forecast(plan, steps)
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
    with backend_for(plans[0]):
        for plan in plans:
            measured.append(measure_forecast(plan, plan.spec.forecast.steps).summary())
    return measured
