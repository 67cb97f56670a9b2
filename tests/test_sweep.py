"""Sweeps for real on a local Ray cluster, through `deps-orch submit`: trials at the same time, each an ordinary
run grouped under the sweep, and ASHA stopping a clearly worse trial after its grace period."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.storage.dataset import results_dataset
from tests.conftest import deps_orch, deps_orch_in_background
from tests.held_time import assert_held_time_adds_up

pytestmark = pytest.mark.ray


def _spec(tmp_path, name: str, sweep: dict, epochs: int, relative_root: bool = False) -> tuple:
    root = tmp_path / "runs"
    spec = {
        "run": name,
        "seed": 0,
        "dataset": {"name": "digits", "resolution": 16, "batch_size": 32, "train_subset": 256, "test_subset": 128},
        "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
        "method": {"name": "deps", "epochs": epochs, "warmup_fraction": 0.5, "eps_ramp_epochs": 1},
        "optimizer": {"lr": 0.1, "lr_batch": 32},
        "cluster": {"num_workers": 1, "cpus_per_worker": 1},
        "evaluation": {
            "subnets": 0,
            "calibration_images": 64,
            "calibration_batch_size": 64,
            "workers": 1,
            "diagnostics": {"enabled": False},
            "latency": {"repeats": 3, "warmup": 1},
        },
        "forecast": {"steps": 2, "max_steps": 2, "warmup_steps": 1},
        "storage": {"root": "runs" if relative_root else str(root)},
        "sweep": {**sweep, "validation_images": 128},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, root


def _span(rows) -> tuple:
    first = min(rows, key=lambda r: r["epoch"])
    return first["finished_at"] - timedelta(seconds=first["wall_seconds"]), max(r["finished_at"] for r in rows)


def test_two_trials_run_at_once_each_an_ordinary_run_grouped_under_the_sweep(tmp_path):
    sweep = {"parameters": {"method.warmup_fraction": {"grid": [0.0, 0.5]}}}
    path, root = _spec(tmp_path, "two", sweep, epochs=2, relative_root=True)
    done = deps_orch("submit", str(path), cwd=tmp_path)  # the trials' runs land under the submitter's ./runs
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[two] sweep: 2 trials, 2 at a time, on Ray Tune" in done.stdout
    assert "2 finished, 0 stopped early, 0 stopped by the budget, 0 failed" in done.stdout
    runs = ["two-t0-warmup_fraction0", "two-t1-warmup_fraction0.5"]
    ledgers = {run: pq.read_table(root / run / "epochs.parquet").to_pylist() for run in runs}
    for run, rows in ledgers.items():
        assert [r["epoch"] for r in rows] == [0, 1] and {r["group"] for r in rows} == {"two"}
        assert all(r["val_top1"] is not None and 0 <= r["val_top1"] <= 100 for r in rows)
        assert all(r["val_top1_smallest"] is not None for r in rows)
        assert json.loads((root / run / "state.json").read_text())["state"] == "SUCCEEDED"
        assert len(pq.read_table(root / run / "subnets.parquet")) == 2  # evaluated, as any run
        assert json.loads((root / run / "tracking.json").read_text())["logged_epochs"] == 2  # its MLflow record
        assert "tracking:" not in (root / run / "run.log").read_text()  # no store error, though both logged at once
    (a_start, a_end), (b_start, b_end) = (_span(rows) for rows in ledgers.values())
    assert a_start < b_end and b_start < a_end  # their training overlapped
    # Both trials' rows in one results dataset, one group.
    table = results_dataset(root, "epochs").to_table().to_pylist()
    assert sorted({r["run"] for r in table}) == runs and {r["group"] for r in table} == {"two"}
    compared = deps_orch("compare", "--group", "two", "--root", str(root), "--format", "json")
    assert compared.returncode == 0 and [r["run"] for r in json.loads(compared.stdout)["runs"]] == runs
    assert (root / "_compare" / "two" / "sweep.png").stat().st_size > 10_000  # the metric and $ per trial
    # Every trial priced by its held time, as any run: useful + overhead + lost is what its devices were held.
    report = deps_orch("cost-report", "two", "--root", str(root), "--format", "json")
    costs = {r["run"]: r for r in json.loads(report.stdout)}
    for run in runs:
        assert_held_time_adds_up(root / run, costs[run], "local cluster")


def test_asha_stops_the_clearly_worse_trial_after_its_grace_period_and_keeps_its_ledger(tmp_path):
    # One at a time, the good trial first: ASHA compares the worse one with it at every rung (deterministic).
    sweep = {
        "parameters": {"optimizer.lr": {"grid": [0.1, 1.0e-6]}},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": 1,
    }
    path, root = _spec(tmp_path, "asha", sweep, epochs=4)
    done = deps_orch("submit", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 finished, 1 stopped early, 0 stopped by the budget, 0 failed" in done.stdout
    good, worse = root / "asha-t0-lr0.1", root / "asha-t1-lr1e_06"
    assert json.loads((good / "state.json").read_text())["state"] == "SUCCEEDED"
    state = json.loads((worse / "state.json").read_text())
    assert state["state"] == "STOPPED_EARLY" and "asha" in state["reason"]
    rows = pq.read_table(worse / "epochs.parquet").to_pylist()
    assert 1 <= len(rows) < 4 and all(r["dollars"] > 0 for r in rows)  # its ledger is kept
    assert not (worse / "subnets.parquet").exists()  # a stopped trial is not evaluated
    report = deps_orch("cost-report", "asha", "--root", str(root), "--format", "json")
    costs = {r["run"]: r for r in json.loads(report.stdout)}
    assert costs[worse.name]["state"] == "STOPPED_EARLY" and costs[worse.name]["train_dollars"] > 0
    status = deps_orch("status", "--root", str(root))
    assert any(worse.name in line and "STOPPED_EARLY" in line for line in status.stdout.splitlines())


def test_a_sweep_whose_controller_is_killed_resumes_and_writes_every_epoch_row_once(tmp_path):
    sweep = {"parameters": {"method.warmup_fraction": {"grid": [0.0, 0.5]}}}
    path, root = _spec(tmp_path, "killed", sweep, epochs=3)
    runs = [root / "killed-t0-warmup_fraction0", root / "killed-t1-warmup_fraction0.5"]
    process = deps_orch_in_background("submit", str(path))
    deadline = time.time() + 300
    while time.time() < deadline and not any((run / "epochs.parquet").exists() for run in runs):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)  # as scancel or a dying login shell would
    output, _ = process.communicate(timeout=120)
    # Killed after a first epoch of three: the sweep had trials to finish.
    assert process.returncode == 130 and "submit the sweep again to resume killed" in output, output
    assert any(json.loads((run / "state.json").read_text())["state"] != "SUCCEEDED" for run in runs)

    again = deps_orch("submit", str(path))
    assert again.returncode == 0, again.stdout + again.stderr
    for run in runs:
        assert json.loads((run / "state.json").read_text())["state"] == "SUCCEEDED"
        epochs = pq.read_table(run / "epochs.parquet").column("epoch").to_pylist()
        assert sorted(epochs) == [0, 1, 2]  # every epoch once
        assert pq.read_metadata(run / "subnets.parquet").num_rows == 2


def test_a_sweep_budget_smaller_than_the_sweep_stops_it_under_the_cap(tmp_path):
    cap = 0.008  # vCPU-hours: about two of the three trials
    sweep = {
        "parameters": {"method.warmup_fraction": {"grid": [0.0, 0.34, 0.67]}},
        "max_concurrent": 1,
        "budget": {"max_device_hours": cap},
    }
    path, root = _spec(tmp_path, "capped", sweep, epochs=3)
    done = deps_orch("submit", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    states, charged = {}, 0.0
    for run in sorted(root.glob("capped-t*")):
        states[run.name] = json.loads((run / "state.json").read_text())["state"]
        for table in ("epochs", "subnets", "lost"):
            if (run / f"{table}.parquet").exists():
                charged += sum(pq.read_table(run / f"{table}.parquet").column("device_hours").to_pylist())
    assert len(states) == 3 and set(states.values()) <= {"SUCCEEDED", "BUDGET_EXHAUSTED"}
    assert "BUDGET_EXHAUSTED" in states.values()
    assert 0 < charged <= cap, (charged, states)
