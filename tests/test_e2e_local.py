"""The DepS job for real, killed and interrupted on the way: its worker, its controller (nothing mocked).

These run on the session's shared Ray cluster (`cluster.backend: ray, address: auto`), as a driver on a
cluster node would; two runs submitted at once on the embedded local backend each start and use their own.
The local backend's whole path (metrics, dashboard, forecast, the ledger's arithmetic, resubmission) is
tests/test_dashboard_metrics.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import deps_orch, deps_orch_in_background

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


def _wait_for_registered_checkpoints(run_dir: Path, count: int, process, timeout: float = 300) -> None:
    """Until Ray Train's controller has registered `count` checkpoints of the run: a restart resumes from those.

    A worker's report returns before the controller registers its checkpoint; the controller's snapshot says
    which it has.
    """
    snapshot = run_dir / "ray" / run_dir.name / "checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(snapshot.read_text()).get("current_report_index", 0) >= count:
                return
        except (OSError, ValueError):
            pass
        if process.poll() is not None:
            raise AssertionError(f"submit exited early: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.2)
    raise AssertionError(f"no {count} registered checkpoints within {timeout}s")


def _wait_for_attempt_epoch(run_dir: Path, attempt: int, process, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "epochs.parquet"
        if path.exists() and attempt in set(pq.read_table(path, columns=["attempt"]).column("attempt").to_pylist()):
            return
        if process.poll() is not None:
            raise AssertionError(f"submit exited early: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.3)
    raise AssertionError(f"attempt {attempt} finished no epoch within {timeout}s")


def test_a_killed_worker_and_then_an_interrupted_controller_both_resume_from_the_last_checkpoint(
    tiny_spec, tmp_path, shared_cluster
):
    spec = tiny_spec("killed", method={"epochs": 5, "warmup_fraction": 0.4}, cluster=shared_cluster.CLUSTER)
    run_dir = tmp_path / "runs" / "killed"
    process = deps_orch_in_background("submit", str(spec), env=shared_cluster.env)
    try:
        # A worker dies: Ray Train restarts the group, which resumes from the last checkpoint.
        _wait_for_epochs(run_dir, 1, process)
        _wait_for_registered_checkpoints(run_dir, 1, process)  # the restarted group resumes from it
        workers = _pids_of("RayTrainWorker")
        assert workers, "no Ray Train worker process found"
        os.kill(workers[-1], signal.SIGKILL)
        # Then the controller is interrupted (SIGTERM, as scancel or kill sends it) once the restarted group trained.
        _wait_for_attempt_epoch(run_dir, 1, process)
        _wait_for_registered_checkpoints(run_dir, 2, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "submit" in output and "again to resume" in output
    assert json.loads((run_dir / "state.json").read_text())["state"] == "INTERRUPTED"
    before = _ledger(run_dir)
    first, resumed = before[before.attempt == 0].epoch, before[before.attempt == 1].epoch
    assert len(first) >= 1 and len(resumed) >= 1
    # The restarted group continued after the last checkpoint instead of starting over.
    assert resumed.min() == first.max() + 1
    assert before.overhead_seconds[resumed.min()] > 0  # the restart's set-up is charged

    again = deps_orch("submit", str(spec), env=shared_cluster.env)
    assert again.returncode == 0, again.stdout + again.stderr
    after = _ledger(run_dir)
    assert list(after.epoch) == list(range(5))  # every epoch exactly once
    kept = before[before.epoch < len(before) - 1]  # the epoch in flight at the interrupt may be redone
    pd.testing.assert_frame_equal(after.iloc[: len(kept)], kept)
    assert after.attempt.max() == 2 and json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"
    assert json.loads((run_dir / "attempts.json").read_text())["attempts"] == 3
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 4


def test_two_runs_submitted_at_once_each_use_a_local_cluster_of_their_own(tiny_spec, tmp_path):
    sections = {
        "method": {"epochs": 2, "warmup_fraction": 0.5},
        "cluster": {"num_workers": 1},
        "evaluation": {"subnets": 0, "workers": 1},
        "forecast": {"measure": False},
    }
    first, second = (tiny_spec(name, **sections) for name in ("first", "second"))
    processes = [deps_orch_in_background("submit", str(spec)) for spec in (first, second)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    gcs = set()
    for name in ("first", "second"):
        run_dir = tmp_path / "runs" / name
        assert list(_ledger(run_dir).epoch) == [0, 1]
        assert json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"
        gcs.add(json.loads((run_dir / "ray.json").read_text())["gcs_address"])
    assert len(gcs) == 2  # two clusters: neither run attached to the other's
