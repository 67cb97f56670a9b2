"""Stopping before the allocation's time limit: the decisions (with clocks moved by hand), and a real run whose
end is faked mid-epoch, stopped with a step checkpoint and resumed to the same losses as one never stopped."""

from __future__ import annotations

import json
import pickle
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.backends.slurm_job import NodeLayout, SlurmRayJob, allocation_end
from orchestrator.plan import make_plan
from orchestrator.spec_file import load_spec
from tests.conftest import deps_orch, deps_orch_in_background
from tests.test_budget import FakeClock
from workers.epoch_guard import EpochGuard
from workers.epoch_progress import restore_rng, rng_state
from workers.methods import build_method
from workers.rundir.state import RunState
from workers.rundir.stops import clear_stop, read_stop
from workers.rundir.time_limit import END_TIME_ENV, TimeLimit, read_notice, write_notice
from workers.supernet.space_spec import build_space


def test_the_limit_comes_from_the_environment_or_not_at_all():
    assert TimeLimit.from_environment({END_TIME_ENV: "1700000000", "SLURM_JOB_END_TIME": "1"}).ends_at == 1.7e9
    assert TimeLimit.from_environment({"SLURM_JOB_END_TIME": "1700000060"}).ends_at == 1700000060.0
    assert TimeLimit.from_environment({"SLURM_JOB_ID": "12"}) == TimeLimit(None)  # only a notice can tell
    assert TimeLimit.from_environment({}) is None  # a local or long-lived cluster: nothing is watched
    with pytest.raises(ValueError, match=f"{END_TIME_ENV}='soon' is not a Unix time"):
        TimeLimit.from_environment({END_TIME_ENV: "soon"})


def _guard(tiny_spec, name: str, clock: FakeClock, limit: TimeLimit) -> EpochGuard:
    spec = load_spec(tiny_spec(name, budget={"check_every_steps": 1}))
    plan = make_plan(spec)
    plan.run_dir.mkdir(parents=True)
    method = build_method(spec.method, build_space(spec), spec.seed)
    return EpochGuard(
        spec.worker_spec(),
        plan.run_dir,
        method,
        0,
        torch.device("cpu"),
        8,
        2,
        0.04,
        clock=clock,
        time_limit=limit,
        wall_clock=clock,
    )


def test_between_steps_the_run_stops_with_a_step_checkpoint_when_the_end_comes_closer_than_a_step(tiny_spec):
    clock = FakeClock()
    guard = _guard(tiny_spec, "steps", clock, TimeLimit(clock() + 25.0, margin_seconds=10.0))
    guard.begin_epoch(1, charged_from=clock())
    decisions = []
    for step in range(8):
        decisions.append(guard.before_step(step))
        if decisions[-1]:
            break
        clock.advance(2.0)  # 2 s steps: each check keeps 1.5 x 2 s, a 2 s tail and the 10 s margin
    # At step 6, 12 s are gone: 12 + 3 + 2 + 10 passes the 25 s left at the start.
    assert decisions == [False] * 6 + [True]
    assert guard.stopped_mid_epoch and guard.save_step
    stop = read_stop(guard.run_dir)
    assert stop.state is RunState.TIME_LIMIT and stop.epoch == 0
    assert "step 7/8 of epoch 2 (warmup)" in stop.reason and "kept in a step checkpoint" in stop.reason

    # No end known when the job started; the warning's notice arrives mid-epoch and is seen at the next step.
    clear_stop(guard.run_dir)
    warned = _guard(tiny_spec, "warned", clock, TimeLimit(None, margin_seconds=10.0))
    warned.begin_epoch(0, charged_from=clock())
    assert warned.before_step(0) is False
    clock.advance(2.0)
    assert warned.before_step(1) is False
    write_notice(warned.run_dir, clock() + 12.0, "USR2")
    assert warned.before_step(2) is True and warned.save_step
    assert read_stop(warned.run_dir).state is RunState.TIME_LIMIT


def test_at_an_epoch_end_the_run_stops_when_the_next_epoch_would_not_fit(tiny_spec):
    def ran_epoch_0(name: str, left: float) -> EpochGuard:
        clock = FakeClock()
        guard = _guard(tiny_spec, name, clock, TimeLimit(clock() + 16.0 + left, margin_seconds=10.0))
        guard.begin_epoch(0, charged_from=clock())
        for step in range(8):
            assert guard.before_step(step) is False
            clock.advance(2.0)
        guard.steps_finished()
        clock.advance(1.0)  # the epoch's tail: all-reduce, checkpoint, ledger row
        return guard

    # Epoch 2 (warmup too) takes 8 steps of 2 s, half a step more and a 1 s tail: 18 s, and the 10 s margin.
    fits = ran_epoch_0("fits", left=29.5)
    assert fits.after_epoch(0, job_end=4) is False
    short = ran_epoch_0("short", left=28.5)
    assert short.after_epoch(0, job_end=4) is True and not short.save_step
    stop = read_stop(short.run_dir)
    assert stop.state is RunState.TIME_LIMIT and stop.epoch == 0
    assert "epoch 2 (warmup, about 18s) would not finish" in stop.reason


def test_a_step_checkpoints_generators_come_back_where_they_were():
    device = torch.device("cpu")
    torch.manual_seed(3)
    saved = rng_state(device)
    expected = torch.rand(4), random.random(), np.random.rand()
    torch.rand(10), random.random(), np.random.rand()
    path = Path(tempfile.mkdtemp()) / "rng.pt"
    torch.save(saved, path)
    restore_rng(torch.load(path, weights_only=True), device)  # through a checkpoint file, as a resume reads it
    again = torch.rand(4), random.random(), np.random.rand()
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def _ledger(run_dir: Path) -> list[dict]:
    return sorted(pq.read_table(run_dir / "epochs.parquet").to_pylist(), key=lambda r: r["epoch"])


def _marker(run_dir: Path, attempt: int) -> dict:
    try:
        return json.loads((run_dir / "attempts" / f"{attempt}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.ray
def test_a_run_stopped_mid_epoch_by_its_time_limit_resumes_at_that_step_as_if_never_stopped(
    tiny_spec, tmp_path, shared_cluster
):
    # Epochs of 89 steps (the digits' 1,437 training images, 2 workers x 8 a step): the notice lands well
    # inside epoch 2.
    sections = {
        "method": {"epochs": 2, "warmup_fraction": 0.5},
        "dataset": {"train_subset": 1536, "batch_size": 8, "resolution": 24},
        "forecast": {"measure": False},
        "budget": {"check_every_steps": 1},
        "cluster": shared_cluster.CLUSTER,
    }
    env = shared_cluster.env | {END_TIME_ENV: str(time.time() + 86400)}  # an allocation a day long
    straight = deps_orch("submit", str(tiny_spec("straight", **sections)), env=env)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    spec = tiny_spec("limited", **sections)
    run_dir = tmp_path / "runs" / "limited"
    first = deps_orch_in_background("submit", str(spec), env=env)
    try:
        deadline = time.monotonic() + 300
        while _marker(run_dir, 0).get("epoch") != 1 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        # The warning comes: the allocation ends now. The next step's check stops the run with a step checkpoint.
        write_notice(run_dir, time.time(), "the test's fake USR2")
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 75, output
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "TIME_LIMIT", state
    stopped_at = re.search(r"step (\d+)/(\d+) of epoch 2", state["reason"])
    assert stopped_at and 1 < int(stopped_at.group(1)) <= int(stopped_at.group(2)), state["reason"]  # mid-epoch
    assert [r["epoch"] for r in _ledger(run_dir)] == [0]
    assert not (run_dir / "lost.parquet").exists()  # nothing trained is lost

    resumed = deps_orch("submit", str(spec), env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ledger, reference = _ledger(run_dir), _ledger(tmp_path / "runs" / "straight")
    assert [r["epoch"] for r in ledger] == [0, 1]  # no epoch row twice
    for got, want in zip(ledger, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
        if want["subnet_loss"] is None:
            assert got["subnet_loss"] is None
        else:
            assert got["subnet_loss"] == pytest.approx(want["subnet_loss"], rel=1e-5, abs=1e-6)
        assert got["subnets_per_step"] == want["subnets_per_step"] and got["images"] == want["images"]
    subnets = {r["subnet_id"]: r["top1"] for r in pq.read_table(run_dir / "subnets.parquet").to_pylist()}
    expected = {
        r["subnet_id"]: r["top1"] for r in pq.read_table(tmp_path / "runs/straight/subnets.parquet").to_pylist()
    }
    assert subnets.keys() == expected.keys()
    assert all(subnets[k] == pytest.approx(expected[k], abs=1e-6) for k in expected)
    log = (run_dir / "run.log").read_text()
    assert "state TIME_LIMIT" in log and "state SUCCEEDED" in log


def test_an_allocation_ends_where_slurm_says_else_at_its_start_plus_its_limit():
    assert allocation_end(3600.0, {"SLURM_JOB_END_TIME": "1700007200", "SLURM_JOB_START_TIME": "1"}) == 1700007200.0
    assert allocation_end(3600.0, {"SLURM_JOB_START_TIME": "1700000000"}) == 1700003600.0


def test_on_usr2_the_head_warns_every_run_and_waits_for_the_driver_before_requeueing(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
    layout = NodeLayout(1, 2, 0, False, 60.0, time_limit_s=3600.0, signal_seconds=120.0)
    job = SlurmRayJob("{}", str(tmp_path), sys.executable, layout, [str(r) for r in runs])
    # A driver whose training stops when its run's notice appears, as the training workers do.
    notice = runs[0] / "time_limit.json"
    job._driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, time\nwhile not os.path.exists({str(notice)!r}): time.sleep(0.02)\nraise SystemExit(75)",
        ]
    )
    asked = time.time()
    resubmission = job.checkpoint()
    assert job._driver.poll() == 75  # it returned only once the driver had ended
    for run in runs:  # the training is to stop at once: the warning's 120 s are for the checkpoint and requeue
        assert asked <= read_notice(run) <= time.time()
    assert resubmission.function is job and pickle.loads(pickle.dumps(job))._driver is None
