"""The evaluation stage: BN calibration and evaluation of many subnets by parallel Ray actors.

The calibration and test images are decoded once and put in Ray's object store
with the checkpoint's weights. A pool of `SubnetEvaluator` actors (each holding
one supernet and switching subnets in place) takes subnets in chunks, and rows
are upserted by (run, subnet_id) as they arrive, so a re-run or a retried chunk
never adds a second row. Subnets already evaluated on the same checkpoint epoch
are skipped.

Static strategies (spread, random, buckets, populations) are one batch of work.
The evolutionary search drives the same pool round by round: each round's
children come from `workers/search.py` and the rows of the rounds before it, so
a resumed search proposes the same children and evaluates only those missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch
from ray.util import ActorPool

from orchestrator.plan import Plan
from workers.data.datasets import calibration_dataset, test_dataset, to_tensors
from workers.evaluation import SubnetEvaluator
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore
from workers.search import EvolutionarySearch, Scored
from workers.selection import EvolutionSelection
from workers.supernet.space import SubnetConfig

MAX_SUBNETS_PER_TASK = 32  # rows reach the store at least this often per worker


def evaluated_rows(plan: Plan, checkpoint_epoch: int) -> dict[str, dict]:
    """The run's subnet rows measured on this checkpoint, by subnet id."""
    columns = ["subnet_id", "config", "macs", "top1", "checkpoint_epoch", "search_round"]
    rows = RunStore(plan.run_dir).subnets().select(columns).to_pylist()
    return {r["subnet_id"]: r for r in rows if r["checkpoint_epoch"] == checkpoint_epoch}


def pending_subnets(plan: Plan, checkpoint_epoch: int) -> list[dict]:
    """Subnets of the plan not yet evaluated on this checkpoint: a re-run evaluates only what is missing."""
    finished = evaluated_rows(plan, checkpoint_epoch)
    return [c.to_dict() for c in plan.subnets if c.subnet_id not in finished]


class _StoredEvaluator:
    """An evaluation actor: on its first task it fetches the weights and images from the object store.

    The refs travel with every task, inside a list so that Ray passes them unresolved: a restarted
    actor (its constructor takes none) fetches them again on the retried task.
    """

    def __init__(self, spec, num_classes: int, threads: int) -> None:
        self.spec, self.num_classes, self.threads = spec, num_classes, threads
        self.evaluator: SubnetEvaluator | None = None

    def evaluate(self, refs: list, configs: list[dict]) -> list[dict]:
        if self.evaluator is None:
            state_dict, calibration, test_images, test_labels = ray.get(refs)
            self.evaluator = SubnetEvaluator(
                self.spec, state_dict, self.num_classes, calibration, test_images, test_labels, self.threads
            )
        return self.evaluator.evaluate(configs)


class EvaluatorPool:
    """Evaluation actors, started on first use; writes each chunk's rows as soon as it returns."""

    def __init__(self, plan: Plan, checkpoint: dict, epoch: int, on_rows: Callable[[int], None] | None = None) -> None:
        self.plan, self.checkpoint, self.epoch, self.on_rows = plan, checkpoint, epoch, on_rows
        self.store = RunStore(plan.run_dir)
        self.actors: list = []
        self.refs: list = []
        self.written = 0

    def _start(self, count: int) -> None:
        work, ev = self.plan.work, self.plan.work.evaluation
        calibration, _ = to_tensors(calibration_dataset(work.dataset, ev.calibration_images))
        test_images, test_labels = to_tensors(test_dataset(work.dataset))
        self.refs = [ray.put(x) for x in (self.checkpoint["model"], calibration, test_images, test_labels)]
        # A dead actor is restarted and its unfinished task retried (fetching the objects again).
        actor_cls = ray.remote(
            num_cpus=ev.cpus_per_worker,
            num_gpus=ev.gpus_per_worker,
            max_restarts=ev.max_restarts,
            max_task_retries=ev.max_restarts,
        )(_StoredEvaluator)
        num_classes = self.plan.dataset.num_classes
        self.actors = [actor_cls.remote(work, num_classes, ev.threads) for _ in range(min(ev.workers, count))]

    def evaluate(self, configs: Sequence[SubnetConfig], search_round: int | None = None) -> list[dict]:
        """Evaluate `configs` (already filtered to what is missing); returns their rows as written."""
        if not configs:
            return []
        if not self.actors:
            self._start(len(configs))
        ev = self.plan.spec.evaluation
        workers = len(self.actors)
        # By default two chunks per worker keeps every worker busy while rows still arrive often.
        size = ev.subnets_per_task or max(1, min(MAX_SUBNETS_PER_TASK, math.ceil(len(configs) / (2 * workers))))
        data = [c.to_dict() for c in configs]
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        written = []
        tasks = ActorPool(self.actors).map_unordered(lambda a, chunk: a.evaluate.remote(self.refs, chunk), chunks)
        for rows in tasks:
            priced = [self._priced(row, search_round) for row in rows]
            self.store.record_subnets(priced)
            written.extend(priced)
            self.written += len(priced)
            if self.on_rows is not None:
                self.on_rows(self.written)
        return written

    def _priced(self, row: dict, search_round: int | None) -> dict:
        plan, alloc = self.plan, self.plan.evaluation
        usage = Usage.of(row["eval_seconds"], alloc.devices, alloc.price.per_device_hour)
        return {
            **row,
            "run": plan.spec.run,
            "group": plan.spec.group,
            "method": plan.method,
            "checkpoint_epoch": self.epoch,
            "devices": alloc.devices,
            "device_type": alloc.price.device_type,
            "device_hours": usage.device_hours,
            "dollars": usage.dollars,
            "evaluated_at": datetime.now(timezone.utc),
            "selection": plan.spec.evaluation.selection.name,
            "search_round": search_round,
        }

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.refs = [], []


def _round_of(row: dict) -> int:
    """Rows another strategy wrote on this checkpoint count as known from the start."""
    return row["search_round"] if row["search_round"] is not None else 0


def run_search(plan: Plan, pool: EvaluatorPool, epoch: int, strategy: EvolutionSelection) -> None:
    """The initial population, then `rounds` rounds of children, each bred from the rows of earlier rounds."""
    done = evaluated_rows(plan, epoch)
    pool.evaluate([c for c in plan.subnets if c.subnet_id not in done], search_round=0)
    # The space the trained supernet serves (for CompOFA the coupled one), as the plan picked the first subnets.
    search = EvolutionarySearch(plan.search_space, strategy, plan.spec.seed)
    for round_index in range(1, strategy.rounds + 1):
        done = evaluated_rows(plan, epoch)
        before = [r for r in done.values() if _round_of(r) < round_index]
        scored = [Scored(SubnetConfig.from_json(r["config"]), r["macs"], r["top1"]) for r in before]
        children = search.offspring(round_index, scored, known=[r["subnet_id"] for r in before])
        pool.evaluate([c for c in children if c.subnet_id not in done], search_round=round_index)


def run_evaluation(plan: Plan, checkpoint_file: Path, on_rows: Callable[[int], None] | None = None) -> int:
    """Evaluate the plan's subnets on the checkpoint; rows are written as they arrive. Returns rows written."""
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    epoch = int(state["epoch"])
    strategy = plan.spec.evaluation.selection
    pool = EvaluatorPool(plan, state, epoch, on_rows)
    try:
        if isinstance(strategy, EvolutionSelection):
            run_search(plan, pool, epoch, strategy)
        else:
            done = evaluated_rows(plan, epoch)
            pool.evaluate([c for c in plan.subnets if c.subnet_id not in done])
    finally:
        pool.close()
    return pool.written
