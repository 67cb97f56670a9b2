"""The evaluation stage: BN calibration and evaluation of many subnets by parallel Ray actors.

The test set is sharded across the actors (`workers/evaluation.py`): each reads
and decodes its own shard and calibration batches, so the driver never holds an
image and the object store holds only the checkpoint's weights. Every subnet is
evaluated by all actors, data-parallel: BN statistics are merged, correct
predictions summed. Rows are upserted by (run, subnet_id) as they arrive, so a
re-run or a retried chunk never adds a second row. Subnets already evaluated on
the same checkpoint epoch are skipped.

Before a batch is calibrated, the actors time every subnet of it (one actor per
subnet, nothing else running): a subnet over `evaluation.constraint.max_latency_ms`
is not evaluated. The MAC limit was applied when the subnets were picked.

Static strategies (spread, random, buckets, populations) are one batch of work.
The evolutionary search drives the same pool round by round: each round's
children come from `workers/search.py` and the rows of the rounds before it, so
a resumed search proposes the same children and evaluates only those missing.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch

from orchestrator.plan import Plan
from workers.evaluation import BatchNormStats, Counts, Shard, SubnetEvaluator, merge_bn_stats, subnet_row
from workers.latency import Latency, LatencyTable, PredictionError
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore
from workers.search import EvolutionarySearch, Scored
from workers.selection import EvolutionSelection, within_macs
from workers.supernet.space import SubnetConfig

SUBNETS_PER_ROUND = 4  # per round trip: each subnet's BN statistics (~100 KB per shard) pass through the driver


def evaluated_rows(plan: Plan, checkpoint_epoch: int) -> dict[str, dict]:
    """The run's subnet rows measured on this checkpoint, by subnet id."""
    columns = ["subnet_id", "config", "macs", "top1", "checkpoint_epoch", "search_round", "latency_ms"]
    rows = RunStore(plan.run_dir).subnets().select(columns).to_pylist()
    return {r["subnet_id"]: r for r in rows if r["checkpoint_epoch"] == checkpoint_epoch}


def pending_subnets(plan: Plan, checkpoint_epoch: int) -> list[dict]:
    """Subnets of the plan not yet evaluated on this checkpoint: a re-run evaluates only what is missing."""
    finished = evaluated_rows(plan, checkpoint_epoch)
    return [c.to_dict() for c in plan.subnets if c.subnet_id not in finished]


class _ShardActor:
    """An evaluation actor holding one shard; on its first task it reads its data and fetches the weights.

    The weights' ref travels with every task, inside a list so that Ray passes it unresolved: a restarted
    actor (its constructor takes no data) reads its shard and fetches the weights again on the retried task.
    """

    def __init__(self, spec, num_classes: int, threads: int, shard: Shard) -> None:
        self.spec, self.num_classes, self.threads, self.shard = spec, num_classes, threads, shard
        self.evaluator: SubnetEvaluator | None = None

    def _ready(self, refs: list) -> SubnetEvaluator:
        if self.evaluator is None:
            (state_dict,) = ray.get(refs)
            self.evaluator = SubnetEvaluator(self.spec, state_dict, self.num_classes, self.threads, self.shard)
        return self.evaluator

    def latency(self, refs: list, configs: list[dict]) -> list[Latency]:
        return self._ready(refs).latency(configs)

    def calibrate(self, refs: list, configs: list[dict]) -> list[tuple[BatchNormStats, float]]:
        return self._ready(refs).calibrate(configs)

    def latency_table(self, refs: list) -> tuple[LatencyTable, PredictionError]:
        return self._ready(refs).latency_table()

    def count(self, refs: list, configs: list[dict], stats: list[BatchNormStats]) -> list[tuple[Counts, float]]:
        return self._ready(refs).count(configs, stats)


class EvaluatorPool:
    """One actor per shard, started on first use; all of them evaluate each subnet, and its row is written at once.

    Chunks are pipelined: an actor calibrates the next chunk while the driver sums this one's counts and
    writes its rows.
    """

    def __init__(
        self,
        plan: Plan,
        checkpoint: dict,
        epoch: int,
        on_rows: Callable[[int], None] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.plan, self.checkpoint, self.epoch, self.on_rows, self.echo = plan, checkpoint, epoch, on_rows, echo
        self.store = RunStore(plan.run_dir)
        self.actors: list = []
        self.refs: list = []
        self.written = 0
        self.over_latency: set[str] = set()  # subnets timed over the constraint's limit, never evaluated

    def _start(self) -> None:
        work, ev = self.plan.work, self.plan.work.evaluation
        self.refs = [ray.put(self.checkpoint["model"])]  # the object store holds the weights, never images
        # A dead actor is restarted and its unfinished task retried (reading its shard again).
        actor_cls = ray.remote(
            num_cpus=ev.cpus_per_worker,
            num_gpus=ev.gpus_per_worker,
            max_restarts=ev.max_restarts,
            max_task_retries=ev.max_restarts,
            scheduling_strategy="SPREAD",  # shards on every node, not packed on the first
        )(_ShardActor)
        num_classes = self.plan.dataset.num_classes
        shards = max(1, min(ev.workers, self.plan.dataset.test_size))
        self.actors = [actor_cls.remote(work, num_classes, ev.threads, Shard(k, shards)) for k in range(shards)]

    def evaluate(self, configs: Sequence[SubnetConfig], search_round: int | None = None) -> list[dict]:
        """Evaluate `configs` (already filtered to what is missing); returns their rows as written."""
        ev = self.plan.spec.evaluation
        configs = [c for c in configs if c.subnet_id not in self.over_latency]
        if not configs:
            return []
        if not self.actors:
            self._start()
            if ev.latency.lookup_table and not self.plan.files.latency_table.exists():
                self._measure_latency_table()
        size = ev.subnets_per_task or SUBNETS_PER_ROUND
        data = [c.to_dict() for c in configs]
        latencies: dict[str, Latency] = {}
        if ev.latency.enabled:
            latencies = self._latencies(data)
            fast = [d for d in data if ev.constraint.admits_latency(latencies[_id(d)].ms)]
            self.over_latency.update(_id(d) for d in data if d not in fast)
            data = fast
            if not data:
                return []
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        written: list[dict] = []
        calibrating = self._calibrate(chunks[0])
        for index, chunk in enumerate(chunks):
            shards = ray.get(calibrating)
            merged = [merge_bn_stats([shard[i][0] for shard in shards]) for i in range(len(chunk))]
            stats = ray.put(merged)
            counting = [a.count.remote(self.refs, chunk, stats) for a in self.actors]
            if index + 1 < len(chunks):  # queued behind the counting: done while this chunk's rows are written
                calibrating = self._calibrate(chunks[index + 1])
            counted = ray.get(counting)
            rows = []
            for i, item in enumerate(chunk):
                counts = functools.reduce(operator.add, (shard[i][0] for shard in counted))
                seconds = sum(shard[i][1] for shard in shards) + sum(shard[i][1] for shard in counted)
                config = SubnetConfig.from_dict(item)
                row = subnet_row(
                    self.plan.search_space,
                    config,
                    self.plan.dataset.num_classes,
                    counts,
                    merged[i].images,
                    seconds,
                    latencies.get(config.subnet_id),
                )
                rows.append(self._priced(row, search_round))
            self.store.record_subnets(rows)
            written.extend(rows)
            self.written += len(rows)
            if self.on_rows is not None:
                self.on_rows(self.written)
        return written

    def _latencies(self, data: list[dict]) -> dict[str, Latency]:
        """Every subnet timed by one actor, the actors side by side, by subnet id."""
        n = len(self.actors)
        parts = ray.get([a.latency.remote(self.refs, data[k::n]) for k, a in enumerate(self.actors)])
        return {_id(d): parts[i % n][i // n] for i, d in enumerate(data)}

    def _measure_latency_table(self) -> None:
        """The per-block latency table, measured once per run by the first actor, kept beside the results."""
        table, error = ray.get(self.actors[0].latency_table.remote(self.refs))
        files = self.plan.files
        files.write_json(
            files.latency_table,
            {
                **table.to_dict(),
                "prediction_error": {
                    "subnets": error.subnets,
                    "mean_abs_pct": error.mean_abs_pct,
                    "max_abs_pct": error.max_abs_pct,
                    "pairs": [{"subnet_id": i, "predicted_ms": p, "measured_ms": m} for i, p, m in error.pairs],
                },
            },
        )
        if self.echo is not None:
            self.echo(
                f"[{self.plan.spec.run}] latency table of {len(table.entries)} block choices on {table.device}: "
                f"predicts {error.subnets} random subnets within {error.mean_abs_pct:.1f} % on average "
                f"(at most {error.max_abs_pct:.1f} %)"
            )

    def _calibrate(self, chunk: list[dict]) -> list:
        return [a.calibrate.remote(self.refs, chunk) for a in self.actors]

    def _priced(self, row: dict, search_round: int | None) -> dict:
        """Its share of the devices held while it was evaluated: its seconds on every shard, each shard's share."""
        plan, alloc = self.plan, self.plan.training
        usage = Usage.of(row["eval_seconds"], plan.eval_devices_per_worker, alloc.price.per_device_hour)
        return {
            **row,
            "run": plan.spec.run,
            "group": plan.spec.group,
            "method": plan.method,
            "checkpoint_epoch": self.epoch,
            "devices": alloc.devices,  # held by the run meanwhile
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


def _id(data: dict) -> str:
    return SubnetConfig.from_dict(data).subnet_id


def _round_of(row: dict) -> int:
    """Rows another strategy wrote on this checkpoint count as known from the start."""
    return row["search_round"] if row["search_round"] is not None else 0


def run_search(plan: Plan, pool: EvaluatorPool, epoch: int, strategy: EvolutionSelection) -> None:
    """The initial population, then `rounds` rounds of children, each bred from the rows of earlier rounds."""
    done = evaluated_rows(plan, epoch)
    pool.evaluate([c for c in plan.subnets if c.subnet_id not in done], search_round=0)
    # The space the trained supernet serves (for CompOFA the coupled one), as the plan picked the first subnets.
    search = EvolutionarySearch(plan.search_space, strategy, plan.spec.seed)
    constraint = plan.spec.evaluation.constraint
    admits = within_macs(plan.search_space, plan.dataset.num_classes, constraint)
    for round_index in range(1, strategy.rounds + 1):
        done = evaluated_rows(plan, epoch)
        before = [r for r in done.values() if _round_of(r) < round_index]
        # Parents only from within the constraint (rows another strategy wrote may be outside it).
        parents = [r for r in before if constraint.admits(r)]
        scored = [Scored(SubnetConfig.from_json(r["config"]), r["macs"], r["top1"]) for r in parents]
        children = search.offspring(round_index, scored, [r["subnet_id"] for r in before], admits)
        pool.evaluate([c for c in children if c.subnet_id not in done], search_round=round_index)


def run_evaluation(
    plan: Plan,
    checkpoint_file: Path,
    on_rows: Callable[[int], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Evaluate the plan's subnets on the checkpoint; rows are written as they arrive. Returns rows written."""
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    epoch = int(state["epoch"])
    strategy = plan.spec.evaluation.selection
    pool = EvaluatorPool(plan, state, epoch, on_rows, echo)
    try:
        if isinstance(strategy, EvolutionSelection):
            run_search(plan, pool, epoch, strategy)
        else:
            done = evaluated_rows(plan, epoch)
            pool.evaluate([c for c in plan.subnets if c.subnet_id not in done])
    finally:
        pool.close()
    return pool.written
