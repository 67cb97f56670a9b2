"""The budget cap and cancel: the decision, and a real run stopped by its budget, resumed, cancelled, finished."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.forecast import Spend, forecast_from_profile, load_forecast, save_forecast
from orchestrator.plan import make_plan
from orchestrator.spec import BudgetSpec
from orchestrator.spec_file import load_spec
from orchestrator.state import RunState
from orchestrator.stopping import (
    RunStopped,
    check_before_evaluation,
    check_before_training,
    raise_if_stopped,
    read_stop,
    request_cancel,
)
from orchestrator.storage.run_store import RunStore
from tests.conftest import REPO, deps_orch
from tests.test_status import epoch_row, profile
from workers.budget import budget_verdict, check_epoch
from workers.epoch_guard import EpochGuard
from workers.methods import build_method
from workers.supernet.factory import build_space


def test_verdict_names_the_limit_it_would_pass():
    spent, coming = Spend(0.5, 2.0), Spend(0.2, 1.0)
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
    forecast = forecast_from_profile(plan, profile())
    save_forecast(plan.run_dir, forecast)
    store = RunStore(plan.run_dir)
    w, s = forecast.epoch_seconds("warmup"), forecast.epoch_seconds("shrinking")
    store.record_epoch(epoch_row(plan, 0, "warmup", w, overhead=forecast.setup_seconds))
    store.record_epoch(epoch_row(plan, 1, "warmup", w))
    spent = sum(r["device_hours"] for r in store.epochs().to_pylist())
    shrink_hours = s * plan.training.devices / 3600
    just_enough = BudgetSpec(max_device_hours=spent + shrink_hours * 1.01)
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
    guard = EpochGuard(spec, plan.run_dir, method, rank=0, device=torch.device("cpu"))
    assert guard.after_epoch(1, job_end=4) is False  # nothing to go by yet: no forecast, no epoch measured
    save_forecast(plan.run_dir, forecast_from_profile(plan, profile()))
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


def test_the_controller_checks_before_training_and_before_evaluation(tiny_spec):
    plan = make_plan(load_spec(tiny_spec("gate", budget={"max_dollars": 1.0})))
    plan.run_dir.mkdir(parents=True)
    check_before_training(plan)  # no forecast, nothing spent: nothing to go by, so it may start
    forecast = forecast_from_profile(plan, profile())
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
def test_a_budget_stops_the_run_cleanly_a_larger_one_resumes_it_and_cancel_keeps_it_resumable(tiny_spec, tmp_path):
    spec = tiny_spec("budgeted", method={"epochs": 4, "warmup_fraction": 0.5}, forecast={"measure": True, "steps": 2})
    root = str(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "budgeted"

    # A budget too small for even the first epoch: the forecast is measured and recorded, nothing trains.
    first = deps_orch("submit", str(spec), "--set", "budget.max_dollars=1e-7")
    assert first.returncode == 3, first.stdout + first.stderr
    assert _state(run_dir)["state"] == "BUDGET_EXHAUSTED" and "epoch 1 (warmup)" in _state(run_dir)["reason"]
    assert not (run_dir / "epochs.parquet").exists()
    forecast = load_forecast(run_dir)
    assert [(p.phase, p.epochs) for p in forecast.phases] == [("warmup", 2), ("shrinking", 2)]

    # A budget, in device-hours, for the set-up, the warmup and half a shrinking epoch by that forecast
    # (which the run keeps using): about half the epochs. The machine may run faster or slower than when
    # it was measured, so the stop may come an epoch earlier or later; it must come before the end, with
    # the ledger under the cap.
    hours = {p.phase: p.epoch_seconds * forecast.devices / 3600 for p in forecast.phases}
    half = forecast.setup_seconds * forecast.devices / 3600 + 2 * hours["warmup"] + 0.5 * hours["shrinking"]
    second = deps_orch("submit", str(spec), "--set", f"budget.max_device_hours={half}")
    assert second.returncode == 3, second.stdout + second.stderr
    state = _state(run_dir)
    assert state["state"] == "BUDGET_EXHAUSTED" and "budget.max_device_hours" in state["reason"]
    ledger = _ledger(run_dir)
    assert 1 <= len(ledger) <= 3, [r["epoch"] for r in ledger]
    assert sum(r["device_hours"] for r in ledger) <= half
    assert not (run_dir / "subnets.parquet").exists()  # no evaluation of a half-trained supernet
    status = deps_orch("status", "budgeted", "--root", root)
    assert "BUDGET_EXHAUSTED" in status.stdout and f"epoch {len(ledger)}/4" in status.stdout

    # A larger budget resumes from the last checkpoint; cancel it while it trains.
    exe = Path(sys.executable).with_name("deps-orch")
    resumed = subprocess.Popen(
        [str(exe), "submit", str(spec), "--set", "budget.max_dollars=100"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while _state(run_dir)["state"] != "TRAINING" and time.time() < deadline and resumed.poll() is None:
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
    cancelled_at = _ledger(run_dir)
    assert cancelled_at[: len(ledger)] == ledger  # nothing already written was touched

    # Submitted again, it finishes: every epoch exactly once, then the evaluation.
    last = deps_orch("submit", str(spec), "--set", "budget.max_dollars=100")
    assert last.returncode == 0, last.stdout + last.stderr
    final = _ledger(run_dir)
    assert [r["epoch"] for r in final] == list(range(4))
    assert final[: len(ledger)] == ledger
    assert _state(run_dir)["state"] == "SUCCEEDED"
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 4
    assert load_forecast(run_dir) == forecast  # measured once: a new budget does not change the forecast
    log = (run_dir / "run.log").read_text()
    for line in ("measuring the forecast", "state BUDGET_EXHAUSTED", "state CANCELLED", "state SUCCEEDED"):
        assert line in log
