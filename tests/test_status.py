"""`deps-orch status`, `logs` and `cancel` on run directories, and the state record they read (no Ray)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from orchestrator.plan import make_plan
from orchestrator.spec_file import load_spec
from orchestrator.status import progress_line, read_status
from tests.conftest import deps_orch
from workers.forecast_model import forecast_from_profile
from workers.profiling import EvalTiming, PhaseTiming, Profile
from workers.rundir.forecast import save_forecast
from workers.rundir.schemas import EPOCH_SCHEMA
from workers.rundir.state import RunState, begin_submission, read_state, write_state
from workers.rundir.tables import RunStore

DEFAULTS = {pa.string(): "", pa.int32(): 0, pa.int64(): 0, pa.float64(): 0.0}


def epoch_row(plan, epoch: int, phase: str, wall: float, overhead: float = 0.0, **extra) -> dict:
    """A complete ledger row as the training loop writes it (every column of the schema)."""
    devices, price = plan.training.devices, plan.training.price.per_device_hour
    hours = (wall + overhead) * devices / 3600
    row = {f.name: None if f.nullable else DEFAULTS.get(f.type) for f in EPOCH_SCHEMA}
    row.update(
        run=plan.spec.run,
        method=plan.method,
        epoch=epoch,
        phase=phase,
        wall_seconds=wall,
        overhead_seconds=overhead,
        devices=devices,
        device_type="cpu",
        device_hours=hours,
        price_per_device_hour=price,
        dollars=hours * price,
        images=512,
        images_per_second=512 / wall,
        subnets_per_step=1.0 if phase == "warmup" else 3.0,
        loss=1.0,
        lr=0.05,
        scalars={"epsilon": 0.0 if phase == "warmup" else 0.5},
        finished_at=datetime.now(timezone.utc),
    )
    row.update(extra)
    return row


def profile() -> Profile:
    return Profile(
        world=2,
        setup_seconds=2.0,
        epoch_fixed_seconds=0.05,
        steps_per_epoch=8,
        phases=[PhaseTiming("warmup", 0, [0.2] * 3, 0.2, 1.0), PhaseTiming("shrinking", 2, [0.5] * 3, 0.5, 3.0)],
        evaluations=[EvalTiming("a", 1_000_000, 0.4, 128, 360, 360), EvalTiming("b", 9_000_000, 0.8, 128, 360, 360)],
    )


@pytest.fixture
def run_dir(tiny_spec):
    """A run two epochs into training (its controller is this test process), with a recorded forecast."""
    plan = make_plan(load_spec(tiny_spec("watched", budget={"max_dollars": 1.0})))
    plan.run_dir.mkdir(parents=True)
    plan.files.plan.write_text(json.dumps(plan.describe()))
    forecast = forecast_from_profile(plan.forecast_basis(), profile())
    save_forecast(plan.run_dir, forecast)
    begin_submission(plan.run_dir)
    write_state(plan.run_dir, RunState.TRAINING)
    store = RunStore(plan.run_dir)
    store.record_epoch(epoch_row(plan, 0, "warmup", forecast.epoch_seconds("warmup"), overhead=2.0))
    store.record_epoch(epoch_row(plan, 1, "warmup", forecast.epoch_seconds("warmup")))
    return plan.run_dir


def test_state_record_keeps_elapsed_time_over_submissions_and_its_controller(tmp_path):
    path = tmp_path
    begin_submission(path)
    record = read_state(path)
    assert record.state is RunState.PENDING and record.pid == os.getpid() and record.host == socket.gethostname()
    assert record.controller_alive() is True
    write_state(path, RunState.TRAINING)
    assert read_state(path).pid == os.getpid()
    started = datetime.fromisoformat(record.started_at)
    later = started + timedelta(seconds=30)
    assert read_state(path).elapsed_seconds(later) == pytest.approx(30.0, abs=0.5)

    write_state(path, RunState.BUDGET_EXHAUSTED, "budget: ...")
    stopped = read_state(path)
    assert stopped.state.is_terminal and stopped.state.is_resumable and stopped.pid is None
    assert stopped.controller_alive() is False
    first = stopped.elapsed_seconds()
    time.sleep(0.2)
    assert stopped.elapsed_seconds() == first  # a stopped run's clock stands still
    begin_submission(path)  # resumed: the clock goes on from there
    assert read_state(path).elapsed_before == pytest.approx(first)
    assert not RunState.SUCCEEDED.is_resumable and RunState.CANCELLED.is_terminal
    log = (tmp_path / "run.log").read_text()
    assert "state TRAINING" in log and "state BUDGET_EXHAUSTED: budget: ..." in log


def test_status_of_a_training_run(run_dir):
    status = read_status(run_dir)
    assert status.state is RunState.TRAINING and status.running and not status.controller_gone
    assert (status.epochs_done, status.epochs_total) == (2, 4)
    assert status.phase == "shrinking"  # the epoch in flight
    assert status.bar().startswith("[##########..........]") and status.bar().endswith(" 50%")
    rows = RunStore(run_dir).epochs().to_pylist()
    assert status.spent.dollars == pytest.approx(sum(r["dollars"] for r in rows))
    forecast = status.forecast_at_launch
    # The first two epochs ran as forecast: the total is still the forecast's.
    assert status.forecast_total.dollars == pytest.approx(forecast.total_dollars, rel=1e-6)
    assert 0 < status.eta_seconds <= 2 * forecast.epoch_seconds("shrinking") + forecast.eval_wall_seconds + 1e-6
    line = progress_line(status)
    for part in ("[watched] TRAINING", "epoch 2/4", "shrinking", "elapsed", "ETA", "forecast", "(budget $1.0000)"):
        assert part in line, line


def test_a_run_whose_controller_died_is_shown_stale(run_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state_path = run_dir / "state.json"
    data = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**data, "pid": dead.pid}))
    status = read_status(run_dir)
    assert status.controller_gone and not status.running and status.state_label == "TRAINING (stale)"
    assert status.row()["eta"] is None


def test_status_logs_and_cancel_commands(run_dir, tmp_path):
    root = str(run_dir.parent)
    table = deps_orch("status", "--root", root)
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()[:3]
    assert "progress" in header and "$ forecast" in header
    assert "watched" in row and "TRAINING" in row and "2/4" in row and "50%" in row
    one = deps_orch("status", "watched", "--root", root)
    assert one.returncode == 0 and "s/epoch forecast" in one.stdout and "budget: max_dollars 1.0" in one.stdout
    as_json = json.loads(deps_orch("status", "--root", root, "--format", "json").stdout)
    assert as_json[0]["run"] == "watched" and as_json[0]["epoch"] == "2/4"

    logs = deps_orch("logs", "watched", "--root", root)
    assert logs.returncode == 0 and "state TRAINING" in logs.stdout
    missing = deps_orch("logs", "nope", "--root", root)
    assert missing.returncode == 2 and "nope: no run there" in missing.stderr

    # This test process "owns" the run; cancelling a run whose controller is gone just records it.
    write_state(run_dir, RunState.INTERRUPTED, "interrupted while training")
    cancelled = deps_orch("cancel", "watched", "--root", root)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    record = read_state(run_dir)
    assert record.state is RunState.CANCELLED and "it was INTERRUPTED" in record.reason
    write_state(run_dir, RunState.SUCCEEDED)
    done = deps_orch("cancel", "watched", "--root", root)
    assert done.returncode == 2 and "already SUCCEEDED" in done.stderr
    nothing = deps_orch("dashboard", "--root", str(tmp_path / "empty"))
    assert nothing.returncode == 2 and "no run under" in nothing.stderr
    assert deps_orch("status", "--root", str(tmp_path / "empty")).stdout.startswith("no runs under")


def test_logs_follow_ends_when_the_run_stops(run_dir):
    exe = Path(sys.executable).with_name("deps-orch")
    follower = subprocess.Popen(
        [str(exe), "logs", str(run_dir), "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(3.0)
    write_state(run_dir, RunState.CANCELLED, "cancelled by a test")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert "state CANCELLED: cancelled by a test" in out
