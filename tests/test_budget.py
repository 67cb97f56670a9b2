"""The budget cap and cancel: the decision, and a real run stopped by its budget, resumed, cancelled, finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.controller import check_before_evaluation, check_before_training
from orchestrator.plan import make_plan
from orchestrator.spec import BudgetSpec
from orchestrator.spec_file import load_spec
from tests.conftest import deps_orch, deps_orch_in_background
from tests.test_status import epoch_row, profile
from workers.epoch_guard import EpochGuard
from workers.forecast_model import forecast_from_profile
from workers.methods import build_method
from workers.profiling import PhaseTiming, Profile
from workers.rundir.budget import budget_verdict, check_epoch
from workers.rundir.forecast import load_forecast, save_forecast
from workers.rundir.pricing import Usage
from workers.rundir.state import RunState
from workers.rundir.stops import RunStopped, raise_if_stopped, read_stop, request_cancel
from workers.rundir.tables import RunStore
from workers.supernet.space_spec import build_space


class FakeClock:
    """A clock the test moves by hand: the guard's decisions then follow from the figures alone."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_verdict_names_the_limit_it_would_pass():
    spent, coming = Usage(0.5, 2.0), Usage(0.2, 1.0)
    assert budget_verdict(BudgetSpec(), spent, coming, "epoch 3") is None
    assert budget_verdict(BudgetSpec(max_dollars=3.0), spent, coming, "epoch 3") is None  # exactly at the cap
    money = budget_verdict(BudgetSpec(max_dollars=2.9), spent, coming, "epoch 3 (shrinking)")
    assert "$2.0000 spent + $1.0000 forecast for epoch 3 (shrinking)" in money
    assert "budget.max_dollars $2.9000" in money
    hours = budget_verdict(BudgetSpec(max_dollars=10, max_device_hours=0.6), spent, coming, "epoch 3")
    assert "budget.max_device_hours 0.6000" in hours


def test_the_next_epoch_is_checked_with_the_ledger_and_the_forecast(tiny_spec):
    plan = make_plan(load_spec(tiny_spec("capped")))
    plan.run_dir.mkdir(parents=True)
    forecast = forecast_from_profile(plan.forecast_basis(), profile())
    save_forecast(plan.run_dir, forecast)
    store = RunStore(plan.run_dir)
    w, s = forecast.epoch_seconds("warmup"), forecast.epoch_seconds("shrinking")
    store.record_epoch(epoch_row(plan, 0, "warmup", w, overhead=forecast.setup_seconds))
    store.record_epoch(epoch_row(plan, 1, "warmup", w))
    spent = sum(r["device_hours"] for r in store.epochs().to_pylist())
    shrink_hours = s * plan.training.devices / 3600
    # Room for the epoch and the step guard's margin on its last step (half of one of its 8 steps).
    assert check_epoch(BudgetSpec(max_device_hours=spent + shrink_hours * 1.05), plan.run_dir, 2, "shrinking", False)
    just_enough = BudgetSpec(max_device_hours=spent + shrink_hours * 1.07)
    assert check_epoch(just_enough, plan.run_dir, 2, "shrinking", new_job=False) is None
    # A resumed run pays its set-up too; the same budget no longer covers the epoch.
    assert check_epoch(just_enough, plan.run_dir, 2, "shrinking", new_job=True) is not None
    short = BudgetSpec(max_device_hours=spent + shrink_hours * 0.99)
    assert "epoch 3 (shrinking)" in check_epoch(short, plan.run_dir, 2, "shrinking", new_job=False)
    assert check_epoch(BudgetSpec(), plan.run_dir, 2, "shrinking", new_job=True) is None


def test_epoch_guard_stops_for_a_cancel_request_or_the_budget_but_not_after_the_last_epoch(tiny_spec):
    spec = load_spec(tiny_spec("guarded", budget={"max_dollars": 1e-9}))
    plan = make_plan(spec)
    plan.run_dir.mkdir(parents=True)
    method = build_method(spec.method, build_space(spec), spec.seed)
    guard = EpochGuard(spec.worker_spec(), plan.run_dir, method, 0, torch.device("cpu"), 16, 2, 0.04)
    assert guard.after_epoch(1, job_end=4) is False  # nothing to go by yet: no forecast, no epoch measured
    save_forecast(plan.run_dir, forecast_from_profile(plan.forecast_basis(), profile()))
    assert guard.after_epoch(3, job_end=4) is False  # the last epoch: the controller decides about evaluation
    assert guard.after_epoch(1, job_end=4) is True
    stop = read_stop(plan.run_dir)
    assert stop.state is RunState.BUDGET_EXHAUSTED and stop.epoch == 1 and "epoch 3 (shrinking)" in stop.reason
    request_cancel(plan.run_dir, "tester@here")
    assert guard.after_epoch(0, job_end=4) is True
    stop = read_stop(plan.run_dir)
    assert stop.state is RunState.CANCELLED and "cancelled by tester@here" in stop.reason
    with pytest.raises(RunStopped) as stopped:
        raise_if_stopped(plan.run_dir)
    assert stopped.value.record == stop


def test_with_a_budget_every_step_checks_that_the_epoch_in_flight_still_fits(tiny_spec):
    budget_hours = 0.001  # 1.8 s on 2 devices
    spec = load_spec(tiny_spec("stepped", budget={"max_device_hours": budget_hours, "check_every_steps": 1}))
    plan = make_plan(spec)
    plan.run_dir.mkdir(parents=True)
    method = build_method(spec.method, build_space(spec), spec.seed)
    clock = FakeClock()
    guard = EpochGuard(spec.worker_spec(), plan.run_dir, method, 0, torch.device("cpu"), 8, 2, 0.04, clock=clock)
    store = RunStore(plan.run_dir)
    store.record_epoch(epoch_row(plan, 0, "warmup", 0.6))  # 0.6 s of the 1.8 on the ledger
    guard.begin_epoch(1, charged_from=clock() - 0.3)  # 0.3 s of set-up before this epoch
    assert guard.before_step(0) is False  # 0.9 s spent, nothing known of a step yet
    clock.advance(0.2)
    assert guard.before_step(1) is False  # 1.1 s spent + a 0.2 s step half again + a 0.2 s tail
    clock.advance(0.4)
    assert guard.before_step(2) is True  # 1.5 s + the slowest step (0.4 s) half again + a tail would pass 1.8 s
    assert guard.stopped_mid_epoch
    stop = read_stop(plan.run_dir)
    assert stop.state is RunState.BUDGET_EXHAUSTED and stop.epoch == 0  # epoch 1's checkpoint: the last kept
    assert "step 3/8 of epoch 2 (warmup)" in stop.reason and "budget.max_device_hours 0.0010" in stop.reason
    assert "epoch 2 is charged as lost work" in stop.reason

    # Without a budget the steps are not watched at all.
    free_spec = load_spec(tiny_spec("free")).worker_spec()
    free = EpochGuard(free_spec, plan.run_dir, method, 0, torch.device("cpu"), 8, 2, 0.04, clock=clock)
    free.begin_epoch(1, charged_from=clock() - 3600)
    assert free.before_step(0) is False and not free.stopped_mid_epoch


def test_a_step_reserves_half_again_the_slowest_step_and_a_job_its_measured_first_step(tiny_spec):
    clock = FakeClock()

    def guarded(name: str, budget_seconds: float) -> EpochGuard:
        spec = load_spec(
            tiny_spec(name, budget={"max_device_hours": budget_seconds * 2 / 3600, "check_every_steps": 1})
        )  # 2 devices
        plan = make_plan(spec)
        timings = [PhaseTiming("warmup", 0, [0.2] * 3, 1.5, 1.0), PhaseTiming("shrinking", 2, [0.5] * 3, 0.5, 3.0)]
        slow_start = Profile(2, 2.0, 0.05, timings, [], 8)
        save_forecast(
            plan.run_dir, forecast_from_profile(plan.forecast_basis(), slow_start)
        )  # a 1.5 s first step, then 0.2 s
        method = build_method(spec.method, build_space(spec), spec.seed)
        return EpochGuard(spec.worker_spec(), plan.run_dir, method, 0, torch.device("cpu"), 8, 2, 0.04, clock=clock)

    # The first step of a job (DDP's first pass, new kernels) is reserved at the forecast's first step.
    short = guarded("first-short", 3.0)
    short.begin_epoch(0, charged_from=clock() - 1.0)
    assert short.before_step(0) is True  # 1 s of set-up + 1.5 s half again + a 0.05 s tail would pass 3 s
    assert "step 1/8 of epoch 1 (warmup)" in read_stop(short.run_dir).reason

    guard = guarded("first-room", 3.6)
    guard.begin_epoch(0, charged_from=clock() - 1.0)
    assert guard.before_step(0) is False  # 3.3 s of 3.6
    clock.advance(0.4)
    assert guard.before_step(1) is False  # a 0.4 s step: 1.4 s + 0.6 + 0.05
    # 3 s spent: the slowest step (0.4 s) and a tail would fit in 3.6 s, but not half a step more.
    guard.begin_epoch(1, charged_from=clock() - 3.0)
    assert guard.before_step(0) is True
    assert "step 1/8 of epoch 2 (warmup)" in read_stop(guard.run_dir).reason


def test_a_job_that_measured_the_forecast_checks_its_first_epoch_with_the_set_up_it_spent(tiny_spec):
    spec = load_spec(tiny_spec("measured", budget={"max_device_hours": 0.01}))  # 18 s on 2 devices
    plan = make_plan(spec)
    save_forecast(plan.run_dir, forecast_from_profile(plan.forecast_basis(), profile()))
    epoch_seconds = load_forecast(plan.run_dir).epoch_seconds("warmup")  # 8 steps of 0.2 s and the fixed work
    method = build_method(spec.method, build_space(spec), spec.seed)
    clock = FakeClock()
    guard = EpochGuard(spec.worker_spec(), plan.run_dir, method, 0, torch.device("cpu"), 8, 2, 0.04, clock=clock)
    # 18 s: the set-up so far and the epoch (with half a step of margin) fit; a second more of set-up does not.
    room = 18.0 - epoch_seconds * (1 + 0.5 / 8)
    assert guard.before_training(0, charged_from=clock() - (room - 0.01)) is False
    assert guard.before_training(0, charged_from=clock() - (room + 0.01)) is True
    stop = read_stop(plan.run_dir)
    assert stop.state is RunState.BUDGET_EXHAUSTED and stop.epoch == -1 and "epoch 1 (warmup)" in stop.reason


def test_the_controller_checks_before_training_and_before_evaluation(tiny_spec):
    plan = make_plan(load_spec(tiny_spec("gate", budget={"max_dollars": 1.0})))
    plan.run_dir.mkdir(parents=True)
    check_before_training(plan)  # no forecast, nothing spent: nothing to go by, so it may start
    forecast = forecast_from_profile(plan.forecast_basis(), profile())
    save_forecast(plan.run_dir, forecast)
    check_before_training(plan)
    check_before_evaluation(plan)
    store = RunStore(plan.run_dir)
    for epoch, phase in enumerate(["warmup", "warmup", "shrinking", "shrinking"]):
        store.record_epoch(epoch_row(plan, epoch, phase, forecast.epoch_seconds(phase)))
    spent = sum(r["dollars"] for r in store.epochs().to_pylist())
    tight = make_plan(load_spec(tiny_spec("gate", budget={"max_dollars": spent * 1.000001})))
    check_before_training(tight)  # every epoch is trained: nothing to check
    with pytest.raises(RunStopped) as stopped:
        check_before_evaluation(tight)
    assert stopped.value.record.state is RunState.BUDGET_EXHAUSTED and stopped.value.record.epoch == 3
    assert "evaluating 4 subnets" in stopped.value.record.reason
    request_cancel(plan.run_dir, "tester@here")
    with pytest.raises(RunStopped) as stopped:
        check_before_evaluation(plan)
    assert stopped.value.record.state is RunState.CANCELLED and "before evaluation" in stopped.value.record.reason

    # Resuming after epoch 1 pays a set-up and an epoch; a budget with room for the epoch alone stops it.
    (plan.run_dir / "epochs.parquet").unlink()
    store.record_epoch(epoch_row(plan, 0, "warmup", forecast.epoch_seconds("warmup"), overhead=forecast.setup_seconds))
    spent = store.epochs().to_pylist()[0]["dollars"]
    epoch_dollars = forecast.epoch_seconds("warmup") * forecast.devices / 3600 * forecast.price_per_device_hour
    short = make_plan(load_spec(tiny_spec("gate", budget={"max_dollars": spent + 1.01 * epoch_dollars})))
    with pytest.raises(RunStopped) as stopped:
        check_before_training(short)
    assert stopped.value.record.epoch == 0 and "epoch 2 (warmup)" in stopped.value.record.reason


def _ledger(run_dir: Path) -> list[dict]:
    return sorted(pq.read_table(run_dir / "epochs.parquet").to_pylist(), key=lambda r: r["epoch"])


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


@pytest.mark.ray
def test_a_budget_stops_the_run_a_larger_one_resumes_it_and_cancel_keeps_it_resumable(
    tiny_spec, tmp_path, shared_cluster
):
    env, cluster = shared_cluster.env, shared_cluster.CLUSTER
    spec = tiny_spec("budgeted", method={"epochs": 4, "warmup_fraction": 0.5}, cluster=cluster)
    root = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "budgeted"

    # A budget smaller than any set-up: the training job measures the forecast, then stops before its first
    # epoch; what it spent (its set-up and the measurement) is charged as lost work.
    first = deps_orch("submit", str(spec), "--set", "budget.max_device_hours=1e-6", env=env)
    assert first.returncode == 3, first.stdout + first.stderr
    state = _state(run_dir)
    assert state["state"] == "BUDGET_EXHAUSTED" and "epoch 1 (warmup)" in state["reason"], state
    assert "BUDGET_EXHAUSTED before any epoch was trained" in first.stdout
    assert not (run_dir / "epochs.parquet").exists()
    forecast = load_forecast(run_dir)
    assert forecast.measured_in_run and [(p.phase, p.epochs) for p in forecast.phases] == [
        ("warmup", 2),
        ("shrinking", 2),
    ]
    (lost,) = pq.read_table(run_dir / "lost.parquet").to_pylist()
    assert lost["attempt"] == 0 and lost["epoch"] == 0 and lost["device_hours"] > 1e-6
    status = deps_orch("status", "budgeted", "--root", root)
    assert "BUDGET_EXHAUSTED" in status.stdout and "epoch 0/4" in status.stdout

    # A larger budget resumes it; cancel it while it trains.
    resumed = deps_orch_in_background("submit", str(spec), "--set", "budget.max_dollars=100", env=env)
    try:
        deadline = time.monotonic() + 300
        while _state(run_dir)["state"] != "TRAINING" and time.monotonic() < deadline and resumed.poll() is None:
            time.sleep(0.3)
        cancel = deps_orch("cancel", "budgeted", "--root", root)
        output, _ = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert resumed.returncode == 130 and "cancelled; submit" in output, output
    state = _state(run_dir)
    assert state["state"] == "CANCELLED" and "cancelled by" in state["reason"]
    cancelled_at = _ledger(run_dir) if (run_dir / "epochs.parquet").exists() else []

    # Submitted again, it finishes: every epoch exactly once, then the evaluation; the lost work stays charged.
    last = deps_orch("submit", str(spec), "--set", "budget.max_dollars=100", env=env)
    assert last.returncode == 0, last.stdout + last.stderr
    final = _ledger(run_dir)
    assert [r["epoch"] for r in final] == list(range(4))
    assert final[: len(cancelled_at)] == cancelled_at  # nothing already written was touched
    assert _state(run_dir)["state"] == "SUCCEEDED"
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 4
    assert pq.read_table(run_dir / "lost.parquet").to_pylist()[0] == lost  # charged once, kept
    assert load_forecast(run_dir) == forecast  # measured once: a new budget does not change the forecast
    log = (run_dir / "run.log").read_text()
    for line in ("measuring the forecast", "state BUDGET_EXHAUSTED", "state CANCELLED", "state SUCCEEDED"):
        assert line in log


@pytest.mark.ray
def test_without_a_forecast_the_first_step_finds_the_budget_spent_and_charges_it_as_lost(
    tiny_spec, tmp_path, shared_cluster
):
    # No forecast, so nothing to go by before training: the first step finds the set-up alone past the cap.
    spec = tiny_spec(
        "midway",
        method={"epochs": 2, "warmup_fraction": 0.5},
        forecast={"measure": False},
        cluster=shared_cluster.CLUSTER,
    )
    run_dir = tmp_path / "runs" / "midway"
    stopped = deps_orch("submit", str(spec), "--set", "budget.max_device_hours=1e-6", env=shared_cluster.env)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    state = _state(run_dir)
    # The in-epoch check comes every 8 steps: the first reserves the epoch's 8 steps.
    assert state["state"] == "BUDGET_EXHAUSTED" and "step 1-8/8 of epoch 1 (warmup)" in state["reason"], state
    assert "BUDGET_EXHAUSTED before any epoch was trained" in stopped.stdout + stopped.stderr
    assert not (run_dir / "epochs.parquet").exists()
    (lost,) = pq.read_table(run_dir / "lost.parquet").to_pylist()
    assert lost["attempt"] == 0 and lost["epoch"] == 0 and lost["detected_by_attempt"] == 0
    assert lost["lost_seconds"] > 0 and lost["device_hours"] > 1e-6  # the set-up paid before the stop
