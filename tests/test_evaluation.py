"""The evaluation stage on a real (tiny, briefly trained) supernet with real Ray actors.

Static strategies write one row per subnet and never a second; the evolutionary
search improves the frontier over its random start, and resumes where it stopped,
breeding the same children.
"""

from __future__ import annotations

import json
import logging
import random

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from orchestrator.evaluation_job import EvaluatorPool, run_evaluation
from orchestrator.plan import make_plan
from orchestrator.reports.pareto import Point, pareto_front
from orchestrator.spec_file import load_spec
from tests.conftest import one_thread_float32
from workers.constraint import SubnetConstraint
from workers.data.datasets import normalization, train_dataset
from workers.rundir.parquet_table import write_atomic
from workers.rundir.tables import RunStore
from workers.selection import FlopBuckets
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet

pytestmark = pytest.mark.ray


def _spec(root, run: str, selection: dict):
    path = root / f"{run}.yaml"
    spec = {
        "run": run,
        "seed": 0,
        "dataset": {"name": "digits", "resolution": 16, "batch_size": 64, "train_subset": 512, "test_subset": 200},
        "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
        "method": {"name": "deps", "epochs": 4},
        "cluster": {"num_workers": 1},
        "evaluation": {
            "selection": selection,
            "calibration_images": 128,
            "calibration_batch_size": 64,
            "workers": 2,
        },
        "storage": {"root": str(root / "runs")},
    }
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A supernet trained for a few seconds the DepS way: the full model alone, then sandwich steps with in-place KD."""
    root = tmp_path_factory.mktemp("trained")
    spec = _spec(root, "train", "spread")
    space = build_space(spec)
    with one_thread_float32():
        torch.manual_seed(0)
        net = build_supernet(spec, space, 10).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        loader = torch.utils.data.DataLoader(train_dataset(spec.dataset), batch_size=64, shuffle=True, drop_last=True)
        rng = random.Random(0)
        net.train()
        model_input = normalization(spec.dataset).to_model_input
        for epoch in range(5):
            for images, labels in loader:
                images = model_input(images, torch.device("cpu"))
                optimizer.zero_grad()
                net.set_active_subnet(space.largest())
                teacher = net(images)
                F.cross_entropy(teacher, labels).backward()
                if epoch >= 3:
                    for config in (space.smallest(), space.sample(rng)):
                        net.set_active_subnet(config)
                        student = F.log_softmax(net(images), dim=1)
                        F.kl_div(
                            student, F.log_softmax(teacher.detach(), 1), reduction="batchmean", log_target=True
                        ).backward()
                optimizer.step()
    path = root / "state.pt"
    torch.save({"model": net.state_dict(), "epoch": 4}, path)
    return path


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    import ray

    ray.init(address=shared_cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def _budget_curve_area(points, lo, hi) -> float:
    """The area under "best top-1 with at most x MACs" over x in [lo, hi]."""
    front = pareto_front(points)
    edges = [max(lo, p.macs) for p in front] + [hi]
    return sum((edges[i + 1] - edges[i]) * p.top1 for i, p in enumerate(front)) / (hi - lo)


def _rows(plan):
    return RunStore(plan.run_dir).subnets().to_pandas()


def test_buckets_evaluated_in_parallel_once_and_resumed_after_a_crash(checkpoint, tmp_path, cluster):
    plan = make_plan(_spec(tmp_path, "buckets", {"name": "buckets", "buckets": 3, "per_bucket": 2}))
    written = []
    assert run_evaluation(plan, checkpoint, on_rows=written.append) == 6
    assert written[-1] == 6 and len(written) >= 2  # rows reached the store chunk by chunk
    rows = _rows(plan)
    buckets = FlopBuckets(*plan.mac_range, 3)
    assert sorted(rows.macs.map(buckets.index).value_counts().to_dict().items()) == [(0, 2), (1, 2), (2, 2)]
    assert (rows.selection == "buckets").all() and rows.search_round.isna().all() and (rows.checkpoint_epoch == 4).all()
    assert (rows.calibration_images == 128).all() and (rows.test_images == 200).all()
    assert rows.loc[rows.macs.idxmax(), "top1"] > 50.0  # trained: chance is 10 %

    # Evaluating again adds nothing.
    assert run_evaluation(plan, checkpoint) == 0
    assert len(_rows(plan)) == 6
    # A crash after two rows: the re-run evaluates exactly the four missing, and no subnet has two rows.
    store = RunStore(plan.run_dir)
    write_atomic(store.files.subnets, store.subnets().slice(0, 2))
    assert run_evaluation(plan, checkpoint) == 4
    again = _rows(plan)
    assert len(again) == 6 and again.subnet_id.is_unique and set(again.subnet_id) == set(rows.subnet_id)


def test_the_driver_decodes_no_image_and_the_actors_agree_with_one_process(checkpoint, tmp_path, cluster, monkeypatch):
    from workers.evaluation import SubnetEvaluator

    plan = make_plan(_spec(tmp_path, "shards", {"name": "random", "subnets": 3}))
    state = torch.load(checkpoint, weights_only=True)
    with one_thread_float32():
        alone = {
            r["subnet_id"]: r
            for r in SubnetEvaluator(plan.work, state["model"], 10, 1).evaluate([c.to_dict() for c in plan.subnets])
        }

    def no_decoding_here(*args, **kwargs):
        raise AssertionError("the driver decoded images")

    monkeypatch.setattr("workers.data.datasets._digits", no_decoding_here)  # the actors are other processes
    assert run_evaluation(plan, checkpoint) == len(plan.subnets)
    rows = _rows(plan)
    assert (rows.test_images == 200).all() and (rows.calibration_images == 128).all()
    for row in rows.itertuples():
        assert row.top1 == pytest.approx(alone[row.subnet_id]["top1"], abs=1e-9)
        assert row.top5 == pytest.approx(alone[row.subnet_id]["top5"], abs=1e-9)


def test_a_killed_evaluation_actor_is_restarted_and_fetches_its_data_again(checkpoint, tmp_path, cluster):
    import ray

    plan = make_plan(_spec(tmp_path, "restart", {"name": "random", "subnets": 4}))
    pool = EvaluatorPool(plan, torch.load(checkpoint, weights_only=True), 4)
    try:
        assert len(pool.evaluate(plan.subnets[:2])) == 2
        ray.kill(pool.actors[0], no_restart=False)  # as if its process died; Ray restarts it
        again = pool.evaluate(plan.subnets)  # two of them a second time: their rows are replaced
    finally:
        pool.close()
    assert len(again) == 6 and len(_rows(plan)) == 6 and _rows(plan).subnet_id.is_unique


def test_evolution_improves_the_frontier_over_its_random_start_and_resumes_where_it_stopped(
    checkpoint, tmp_path, cluster
):
    selection = {"name": "evolution", "initial": 16, "rounds": 3, "mutations": 8, "crossovers": 8, "parents": 8}
    plan = make_plan(_spec(tmp_path, "evo", selection))
    assert len(plan.subnets) == 18  # 16 random, the smallest and the largest
    written = run_evaluation(plan, checkpoint)
    rows = _rows(plan)
    assert written == len(rows) == 18 + 3 * 16 and rows.subnet_id.is_unique
    assert rows.search_round.value_counts().sort_index().to_dict() == {0: 18, 1: 16, 2: 16, 3: 16}

    lo, hi = plan.mac_range
    start = [Point(r.macs, r.top1) for r in rows[rows.search_round == 0].itertuples()]
    every = [Point(r.macs, r.top1) for r in rows.itertuples()]
    # The best top-1 any MAC budget buys (a staircase, so more subnets can only raise it): children raised it.
    assert _budget_curve_area(every, lo, hi) > _budget_curve_area(start, lo, hi)
    assert any(r.search_round > 0 for r in rows.itertuples() if Point(r.macs, r.top1) in pareto_front(every))

    # Lose the last two rounds (a crash): the search breeds the same children again and evaluates only them.
    store = RunStore(plan.run_dir)
    table = store.subnets()
    keep = [r is not None and r <= 1 for r in table.column("search_round").to_pylist()]
    write_atomic(store.files.subnets, table.filter(keep))
    assert run_evaluation(plan, checkpoint) == 32
    resumed = _rows(plan)
    assert sorted(resumed.subnet_id) == sorted(rows.subnet_id)
    assert run_evaluation(plan, checkpoint) == 0
    assert pq.read_metadata(store.files.subnets).num_rows == len(rows)


def test_a_constrained_search_evaluates_and_breeds_only_within_the_limit_and_improves_under_it(
    checkpoint, tmp_path, cluster
):
    base = make_plan(_spec(tmp_path, "probe", "spread"))
    lo, hi = base.mac_range
    limit = lo + (hi - lo) * 0.6
    # Without the smallest subnet in the start (on this briefly trained supernet it is among the most accurate).
    selection = {"name": "evolution", "initial": 8, "rounds": 3, "mutations": 8, "crossovers": 8, "parents": 6}
    selection["include_extremes"] = False
    spec = _spec(tmp_path, "evo-limited", selection)
    spec = spec.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"constraint": SubnetConstraint(max_macs=limit)})}
    )
    plan = make_plan(spec)
    written = run_evaluation(plan, checkpoint)
    rows = _rows(plan)
    assert written == len(rows) and rows.subnet_id.is_unique and (rows.macs <= limit).all()
    assert rows.search_round.value_counts().sort_index().to_dict() == {0: 8, 1: 16, 2: 16, 3: 16}
    # Every evaluated subnet was timed on the worker's device.
    assert rows.latency_ms.notna().all() and (rows.latency_ms > 0).all() and (rows.batch_latency_ms > 0).all()
    assert (rows.latency_batch_size == 16).all() and rows.latency_device.str.len().gt(0).all()
    assert (rows.latency_threads == 1).all()

    start = [Point(r.macs, r.top1) for r in rows[rows.search_round == 0].itertuples()]
    every = [Point(r.macs, r.top1) for r in rows.itertuples()]
    assert _budget_curve_area(every, lo, limit) > _budget_curve_area(start, lo, limit)


def test_a_subnet_over_the_latency_limit_is_timed_but_never_evaluated(checkpoint, tmp_path, cluster):
    def plan_with(limit_ms: float, run: str, lookup_table: bool = False):
        spec = _spec(tmp_path, run, {"name": "random", "subnets": 4})
        ev = spec.evaluation
        update = {
            "constraint": SubnetConstraint(max_latency_ms=limit_ms),
            "latency": ev.latency.model_copy(update={"lookup_table": lookup_table, "repeats": 5}),
        }
        return make_plan(spec.model_copy(update={"evaluation": ev.model_copy(update=update)}))

    none_fast_enough = plan_with(1e-9, "too-slow")
    assert run_evaluation(none_fast_enough, checkpoint) == 0 and len(_rows(none_fast_enough)) == 0
    assert not none_fast_enough.files.latency_table.exists()
    generous = plan_with(1e6, "fast-enough", lookup_table=True)
    said = []
    assert run_evaluation(generous, checkpoint, echo=said.append) == 6 and _rows(generous).latency_ms.lt(1e6).all()
    # The lookup table, measured once by the first worker and checked on 20 random subnets.
    table = json.loads(generous.files.latency_table.read_text())
    assert len(table["entries"]) == 20 * 9 + 1 and table["prediction_error"]["subnets"] == 20
    assert len(said) == 1 and "latency table of 181 block choices" in said[0]
