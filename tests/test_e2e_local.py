"""The DepS job for real: `deps-orch submit` on a local Ray cluster with 2 workers (nothing mocked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.cost.catalog import lookup_price
from tests.conftest import REPO, deps_orch
from workers.rundir.schemas import EPOCH_SCHEMA, SUBNET_SCHEMA
from workers.supernet.space import mobilenetv3_space

pytestmark = pytest.mark.ray


def _ledger(run_dir: Path) -> pd.DataFrame:
    return pq.read_table(run_dir / "epochs.parquet").to_pandas().sort_values("epoch").reset_index(drop=True)


def _wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "epochs.parquet"
        if path.exists() and pq.read_metadata(path).num_rows >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"submit exited early: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.3)
    raise AssertionError(f"no {count} epochs within {timeout}s")


def _submit_in_background(spec: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("deps-orch")
    return subprocess.Popen(
        [str(exe), "submit", str(spec)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _pids_of(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_deps_job_trains_prices_evaluates_and_resubmits_without_duplicates(tiny_spec, tmp_path):
    spec = tiny_spec("e2e")
    result = deps_orch("submit", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "e2e"

    ledger = _ledger(run_dir)
    assert pq.read_schema(run_dir / "epochs.parquet").names == EPOCH_SCHEMA.names
    assert list(ledger.epoch) == [0, 1, 2, 3]
    # Warmup: 2 of 4 epochs train the full model alone; shrinking trains 3 subnets a step.
    assert list(ledger.phase) == ["warmup", "warmup", "shrinking", "shrinking"]
    assert list(ledger.subnets_per_step) == [1.0, 1.0, 3.0, 3.0]
    assert ledger.subnet_loss[:2].isna().all() and ledger.subnet_loss[2:].notna().all()
    # ε: 0 in warmup; linear per batch over 1 epoch of 8 steps from 1e-4, recorded at each epoch's last step.
    epsilon = [dict(s)["epsilon"] for s in ledger.scalars]  # DepS's own scalar, by name
    assert epsilon[:2] == [0.0, 0.0]
    assert epsilon[2] == pytest.approx(1e-4 + (1 - 1e-4) * 7 / 8)
    assert epsilon[3] == 1.0
    # Ledger arithmetic: device-hours = (wall + overhead) x devices / 3600; dollars = device-hours x price.
    price = lookup_price("cpu", "on_demand").per_device_hour
    assert (ledger.devices == 2).all() and (ledger.device_type == "cpu").all()
    assert (ledger.price_per_device_hour == price).all()
    expected_hours = (ledger.wall_seconds + ledger.overhead_seconds) * 2 / 3600
    assert ledger.device_hours.to_numpy() == pytest.approx(expected_hours.to_numpy())
    assert ledger.dollars.to_numpy() == pytest.approx((ledger.device_hours * price).to_numpy())
    assert (ledger.images == 8 * 64).all()
    assert ledger.images_per_second.to_numpy() == pytest.approx((ledger.images / ledger.wall_seconds).to_numpy())
    assert ledger.overhead_seconds[0] > 0 and (ledger.overhead_seconds[1:] == 0).all()
    assert ledger.lr.is_monotonic_decreasing

    subnets = pq.read_table(run_dir / "subnets.parquet").to_pandas()
    assert pq.read_schema(run_dir / "subnets.parquet").names == SUBNET_SCHEMA.names
    space = mobilenetv3_space(0.35, cifar=True, resolution=16)
    ids = set(subnets.subnet_id)
    assert len(subnets) == 4 and {space.smallest().subnet_id, space.largest().subnet_id} <= ids
    assert subnets.macs.min() < subnets.macs.max() and (subnets.top5 >= subnets.top1).all()
    assert (subnets.calibration_images == 128).all() and (subnets.test_images == 360).all()
    assert (subnets.checkpoint_epoch == 3).all()
    largest = subnets.loc[subnets.macs.idxmax()]
    assert largest.top1 > 50.0  # 10 classes: chance is 10 %
    assert subnets.dollars.to_numpy() == pytest.approx((subnets.device_hours * price).to_numpy())
    assert json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"

    report = deps_orch("cost-report", "e2e", "--root", str(tmp_path / "runs"), "--format", "json")
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["epochs"] == 4 and row["train_dollars"] == pytest.approx(ledger.dollars.sum())
    assert row["largest_top1"] == pytest.approx(largest.top1)
    table = deps_orch("cost-report", str(run_dir))
    assert "dev-min/epoch" in table.stdout and "e2e" in table.stdout

    # Submitting the same run again resumes from its last checkpoint: nothing retrains, nothing is duplicated.
    again = deps_orch("submit", str(spec))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 subnets evaluated" in again.stdout
    pd.testing.assert_frame_equal(_ledger(run_dir), ledger)
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 4


def test_a_killed_worker_resumes_from_the_last_checkpoint(tiny_spec, tmp_path):
    spec = tiny_spec("killed", method={"epochs": 6, "warmup_fraction": 0.5})
    run_dir = tmp_path / "runs" / "killed"
    process = _submit_in_background(spec)
    try:
        _wait_for_epochs(run_dir, 2, process)
        time.sleep(1.0)  # let the epoch's checkpoint reach storage
        workers = _pids_of("RayTrainWorker")
        assert workers, "no Ray Train worker process found"
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    ledger = _ledger(run_dir)
    assert list(ledger.epoch) == list(range(6))  # every epoch exactly once
    first = ledger[ledger.attempt == 0].epoch
    resumed = ledger[ledger.attempt == 1].epoch
    assert len(first) >= 1 and len(resumed) >= 1
    # The restarted group continued after the last checkpoint instead of starting over.
    assert resumed.min() == first.max() + 1
    assert ledger.overhead_seconds[resumed.min()] > 0  # the restart's set-up is charged
    assert json.loads((run_dir / "attempts.json").read_text())["attempts"] == 2
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 4


def test_an_interrupted_controller_resumes_when_submitted_again(tiny_spec, tmp_path):
    spec = tiny_spec("interrupted", method={"epochs": 6, "warmup_fraction": 0.5})
    run_dir = tmp_path / "runs" / "interrupted"
    process = _submit_in_background(spec)
    try:
        _wait_for_epochs(run_dir, 2, process)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "submit" in output and "again to resume" in output
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "INTERRUPTED"
    before = _ledger(run_dir)

    again = deps_orch("submit", str(spec))
    assert again.returncode == 0, again.stdout + again.stderr
    after = _ledger(run_dir)
    assert list(after.epoch) == list(range(6))
    kept = before[before.epoch < len(before) - 1]  # the epoch in flight at the interrupt may be redone
    pd.testing.assert_frame_equal(after.iloc[: len(kept)], kept)
    assert after.attempt.max() == 1 and json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"
