"""The evaluation stage: BN calibration and evaluation of many subnets by parallel Ray actors."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch
from ray.util import ActorPool

from orchestrator.cost.pricing import price_usage
from orchestrator.plan import Plan
from orchestrator.storage.run_store import RunStore
from workers.data.datasets import calibration_dataset, test_dataset, to_tensors
from workers.evaluation import SubnetEvaluator


def pending_subnets(plan: Plan, checkpoint_epoch: int) -> list[dict]:
    """Subnets of the plan not yet evaluated on this checkpoint: a re-run evaluates only what is missing."""
    done = RunStore(plan.run_dir).subnets().select(["subnet_id", "checkpoint_epoch"]).to_pylist()
    finished = {r["subnet_id"] for r in done if r["checkpoint_epoch"] == checkpoint_epoch}
    return [c.to_dict() for c in plan.subnets if c.subnet_id not in finished]


def run_evaluation(plan: Plan, checkpoint_file: Path, on_rows: Callable[[int], None] | None = None) -> int:
    """Evaluate the plan's subnets on the checkpoint; rows are written as they arrive. Returns rows written."""
    spec, ev = plan.spec, plan.spec.evaluation
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    epoch = int(state["epoch"])
    todo = pending_subnets(plan, epoch)
    if not todo:
        return 0
    calibration, _ = to_tensors(calibration_dataset(spec.dataset, ev.calibration_images))
    test_images, test_labels = to_tensors(test_dataset(spec.dataset))
    refs = [ray.put(x) for x in (state["model"], calibration, test_images, test_labels)]

    workers = min(ev.workers, len(todo))
    actor_cls = ray.remote(num_cpus=ev.cpus_per_worker, num_gpus=ev.gpus_per_worker)(SubnetEvaluator)
    actors = [
        actor_cls.remote(spec, refs[0], plan.dataset.num_classes, refs[1], refs[2], refs[3], ev.cpus_per_worker)
        for _ in range(workers)
    ]
    # Two chunks per worker keeps every worker busy while rows still arrive often.
    size = max(1, math.ceil(len(todo) / (2 * workers)))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    store, written = RunStore(plan.run_dir), 0
    try:
        for rows in ActorPool(actors).map_unordered(lambda a, chunk: a.evaluate.remote(chunk), chunks):
            store.record_subnets([_priced(plan, row, epoch) for row in rows])
            written += len(rows)
            if on_rows is not None:
                on_rows(written)
    finally:
        for actor in actors:
            ray.kill(actor)
    return written


def _priced(plan: Plan, row: dict, epoch: int) -> dict:
    alloc = plan.evaluation
    usage = price_usage(row["eval_seconds"], alloc.devices, alloc.price.per_device_hour)
    return {
        **row,
        "run": plan.spec.run,
        "method": plan.method,
        "checkpoint_epoch": epoch,
        "devices": alloc.devices,
        "device_type": alloc.price.device_type,
        "device_hours": usage.device_hours,
        "dollars": usage.dollars,
        "evaluated_at": datetime.now(timezone.utc),
    }
