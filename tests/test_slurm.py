"""The Slurm backend on a real single-node Slurm (tests/slurm_cluster.py): submitit, Ray in the allocation, requeues.

Nothing is mocked: `deps-orch submit` runs sbatch through submitit, the job
starts Ray on the allocation's node, trains and evaluates, and the tests read
the Parquet results, sacct's job states and /proc for Ray processes left over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.backends.ray_node import session_members
from tests.conftest import REPO, deps_orch
from tests.disk_formats import write_image_folder
from tests.slurm_cluster import SlurmUnavailable, shared_cluster
from workers.rundir.schemas import LOST_SCHEMA

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def slurm():
    """A running Slurm; SLURM_CONF points this process and the CLI it starts at it."""
    try:
        cluster = shared_cluster()
    except SlurmUnavailable as reason:  # a developer machine without root; CI runs as root and installs Slurm
        pytest.skip(str(reason))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    yield cluster
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def _slurm_spec(tiny_spec, name: str, epochs: int, **sections) -> Path:
    cluster = {"backend": "slurm", "num_workers": 2, "cpus_per_worker": 1, "slurm": {"time_minutes": 30}}
    return tiny_spec(
        name,
        method={"epochs": epochs, "warmup_fraction": 0.5},
        cluster=cluster,
        forecast={"measure": False},
        **sections,
    )


def _submit_in_background(*args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("deps-orch")
    return subprocess.Popen(
        [str(exe), "submit", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"submit exited early ({process.returncode}) waiting for {what}: {process.stdout.read()}"
            )
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _epochs(run_dir: Path) -> int:
    path = run_dir / "epochs.parquet"
    return pq.read_metadata(path).num_rows if path.exists() else 0


def _ledger(run_dir: Path):
    return pq.read_table(run_dir / "epochs.parquet").to_pandas().sort_values("epoch").reset_index(drop=True)


def _job_id(run_dir: Path) -> str:
    return str(json.loads((run_dir / "slurm" / "job.json").read_text())["job_id"])


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or ["UNKNOWN"])[-1].split()[0]


def _state(run_dir: Path) -> str:
    path = run_dir / "state.json"
    return json.loads(path.read_text())["state"] if path.exists() else ""


def _heads(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "slurm").glob("*/ray-head-*.json"))]


def _assert_no_ray_left(run_dir: Path, timeout: float = 30.0) -> None:
    """Every Ray session the job started is empty, and no process names the job's Ray directory."""
    heads = _heads(run_dir)
    assert heads, "the job never started a Ray head"
    job_id = _job_id(run_dir)

    def gone() -> bool:
        if any(session_members(h["session"]) for h in heads):
            return False
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and f"deps-ray-{job_id}-" in (entry / "cmdline").read_text(errors="replace"):
                    return False
            except OSError:
                continue
        return True

    _wait_for(gone, timeout, "the job's Ray processes to be gone")


def _into_next_epoch(run_dir: Path, seconds: float) -> float:
    """Seconds attempt 0 is into the epoch after its first finished one, by its marker's heartbeat (0 if not yet)."""
    path = run_dir / "attempts" / "0.json"
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0
    if marker["last_epoch_end"] is None or marker["epoch"] < 1:
        return 0.0
    into = marker["heartbeat_at"] - marker["last_epoch_end"]
    return into if into >= seconds else 0.0


def test_a_job_slurm_refuses_is_one_line_naming_the_field(slurm, tiny_spec):
    spec = _slurm_spec(tiny_spec, "slurm-refused", epochs=2)
    result = deps_orch("submit", str(spec), "--set", "cluster.slurm.partition=no-such-partition", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("deps-orch: error: cluster.slurm: sbatch refused the job:") and "partition" in line


def test_scancel_stops_the_run_and_leaves_no_ray_process(slurm, tiny_spec, tmp_path):
    spec = _slurm_spec(tiny_spec, "slurm-cancel", epochs=30)
    result = deps_orch("submit", str(spec), "--detach", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "detached" in result.stdout
    run_dir = tmp_path / "runs" / "slurm-cancel"
    job_id = _job_id(run_dir)
    _wait_for(lambda: _heads(run_dir) and _state(run_dir) == "TRAINING", 300, "Ray and the driver to start")

    subprocess.run(["scancel", job_id], check=True)
    _wait_for(lambda: _sacct_state(job_id) == "CANCELLED", 60, "sacct to say CANCELLED")
    _assert_no_ray_left(run_dir)
    _wait_for(lambda: _state(run_dir) == "INTERRUPTED", 30, "the driver to leave the run INTERRUPTED")


def _preempted(tiny_spec, name: str, signal_job) -> tuple[Path, str, tuple[int, float], str]:
    """A 4-epoch run hit 1 s into its second epoch by `signal_job(job_id)`; returns (run dir, job, (the epoch in
    flight then, the seconds its marker showed it in), output)."""
    spec = _slurm_spec(tiny_spec, name, epochs=4, evaluation={"subnets": 0})
    run_dir = tmp_root(spec) / name
    process = _submit_in_background(str(spec))
    try:
        _wait_for(lambda: _into_next_epoch(run_dir, 1.0), 400, "a heartbeat 1 s into the second epoch", process)
        marker = json.loads((run_dir / "attempts" / "0.json").read_text())  # once: the epoch and its seconds agree
        in_flight, seen = marker["epoch"], marker["heartbeat_at"] - marker["last_epoch_end"]
        job_id = _job_id(run_dir)
        signal_job(job_id)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "SUCCEEDED" in output, output
    ledger = _ledger(run_dir)
    assert list(ledger.epoch) == list(range(4))  # every epoch exactly once
    assert json.loads((run_dir / "attempts.json").read_text())["attempts"] == 2
    first, resumed = list(ledger[ledger.attempt == 0].epoch), list(ledger[ledger.attempt == 1].epoch)
    assert first and resumed and resumed[0] == first[-1] + 1  # resumed after the last checkpoint
    assert len(_heads(run_dir)) == 2  # Ray started in both allocations of the job
    assert sorted(p.name for p in (run_dir / "slurm" / job_id).glob("ray-head-*.json")) == [
        "ray-head-0.json",
        "ray-head-1.json",
    ]
    _assert_no_ray_left(run_dir)
    return run_dir, job_id, (in_flight, seen), output


def tmp_root(spec: Path) -> Path:
    return Path(yaml.safe_load(spec.read_text())["storage"]["root"])


def _held_time_adds_up(run_dir: Path, first_closed: bool) -> dict:
    """One hold per allocation (the first and its requeue), each second of it useful, overhead or lost."""
    report = deps_orch("cost-report", str(run_dir), "--format", "json")
    (row,) = json.loads(report.stdout)
    holds = pq.read_table(run_dir / "holds.parquet").to_pandas()
    assert list(holds.kind) == ["slurm allocation"] * 2 and (holds.devices == 2).all()
    # An allocation killed with its driver leaves its hold ending at its last heartbeat; one that ends on its
    # own closes it.
    assert not holds.open.iloc[1] and (not holds.open.iloc[0] if first_closed else True)
    assert row["held_device_hours"] == pytest.approx(holds.device_hours.sum())
    assert row["useful_device_hours"] + row["overhead_device_hours"] + row["lost_device_hours"] == pytest.approx(
        row["held_device_hours"]
    )
    assert row["overhead_device_hours"] > 0 and row["total_dollars"] == pytest.approx(holds.dollars.sum())
    return row


def test_the_time_limits_warning_stops_training_cleanly_and_the_requeued_job_loses_nothing(slurm, tiny_spec):
    # The time limit's warning (or a preemption's), as Slurm sends it: USR2 to the job. The head tells the
    # training, which stops at its next check with nothing lost; then submitit requeues the job.
    run_dir, _, _, output = _preempted(
        tiny_spec, "slurm-warned", lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True)
    )
    assert "USR2: the allocation ends in 120s" in output and "requeueing" in output
    log = (run_dir / "run.log").read_text()
    assert "state TIME_LIMIT" in log and "state SUCCEEDED" in log
    assert not (run_dir / "lost.parquet").exists()  # every step trained is in a checkpoint
    row = _held_time_adds_up(run_dir, first_closed=True)
    assert row["lost_device_hours"] == 0
    print(deps_orch("cost-report", str(run_dir)).stdout)


def test_a_job_requeued_without_warning_resumes_and_the_ledger_shows_the_lost_hours(slurm, tiny_spec):
    # Slurm requeues the job itself (a preemption with no grace time): SIGTERM, the epoch in flight is lost.
    run_dir, job_id, (in_flight, seen), output = _preempted(
        tiny_spec, "slurm-preempt", lambda job: subprocess.run(["scontrol", "requeue", job], check=True)
    )
    assert "stopped by SIGTERM" in output
    ledger = _ledger(run_dir)
    first = list(ledger[ledger.attempt == 0].epoch)
    lost = pq.read_table(run_dir / "lost.parquet").to_pandas()
    assert pq.read_schema(run_dir / "lost.parquet").names == LOST_SCHEMA.names
    assert list(lost.attempt) == [0] and list(lost.detected_by_attempt) == [1]
    assert list(lost.epoch) == [first[-1] + 1]  # the first epoch attempt 1 trained: where the lost work begins
    # The workers train on until Slurm's SIGTERM reaches them: the epoch in flight at the requeue may still have
    # finished, and its checkpoint been kept (then attempt 1 resumed after it) or not (then attempt 1 trained it
    # again, and it is lost from the end of the epoch before). Either way the lost work begins where attempt 1 did.
    if lost.epoch[0] == in_flight:
        assert lost.lost_seconds[0] >= seen  # at least the time the marker showed in that epoch
    else:
        assert in_flight <= first[-1] and lost.lost_seconds[0] >= 0
    price = ledger.price_per_device_hour[0]
    assert lost.device_hours[0] == pytest.approx(lost.lost_seconds[0] * 2 / 3600)
    assert lost.dollars[0] == pytest.approx(lost.device_hours[0] * price)
    row = _held_time_adds_up(run_dir, first_closed=False)
    assert row["lost_device_hours"] == pytest.approx(lost.device_hours.sum())
    columns = ["attempt", "epoch", "lost_seconds", "device_hours", "dollars"]
    print("\nlost work of the preemption test:\n" + lost[columns].to_string())
    print(deps_orch("cost-report", str(run_dir)).stdout)


def test_the_imagenet_spec_plans_for_slurm_and_trains_an_epoch_on_a_tiny_image_folder(slurm, tmp_path):
    data = write_image_folder(tmp_path / "imagenet")
    spec = str(REPO / "jobspecs" / "imagenet.yaml")
    root = ["--set", f"dataset.root={data}", "--set", f"storage.root={tmp_path / 'runs'}"]
    dry = deps_orch("submit", spec, "--dry-run", "--set", "dataset.batch_size=1", *root)
    assert dry.returncode == 0, dry.stderr
    plan = yaml.safe_load(dry.stdout)
    slurm_plan = plan["cluster"]["slurm"]
    assert (slurm_plan["nodes"], slurm_plan["gpus_per_node"], slurm_plan["gpus"]) == (4, 4, 16)
    assert slurm_plan["sbatch"]["gpus-per-node"] == 4 and slurm_plan["sbatch"]["partition"] == "gpu"
    assert slurm_plan["sbatch"]["exclusive"] is True and slurm_plan["sbatch"]["signal"] == "USR2@300"
    assert plan["cluster"]["collective_backend"] == "nccl"
    assert plan["cost"]["device_type"] == "A40" and plan["cost"]["price_per_device_hour"] == pytest.approx(
        1491 / 700, 1e-3
    )
    assert slurm_plan["dollars_per_hour"] == pytest.approx(16 * plan["cost"]["price_per_device_hour"])

    tiny = {
        "dataset.resolution": 32,
        "dataset.batch_size": 4,
        "dataset.loader_workers": 0,
        "space.width_mult": 0.35,
        "method.epochs": 1,
        "method.warmup_fraction": 0,
        "cluster.num_workers": 2,
        "cluster.cpus_per_worker": 1,
        "cluster.gpus_per_worker": 0,
        "cluster.slurm.nodes": 1,
        "cluster.slurm.gpus_per_node": 0,
        "cluster.slurm.cpus_per_node": 2,
        "cluster.slurm.mem_gb": "null",
        "cluster.slurm.partition": "null",
        "cluster.slurm.constraint": "null",
        "cluster.slurm.time_minutes": 15,
        "evaluation.subnets": 0,
        "evaluation.workers": 2,
        "evaluation.cpus_per_worker": 1,
        "evaluation.gpus_per_worker": 0,
        "evaluation.calibration_images": 12,
        "forecast.measure": "false",
        "precision": "fp32",  # the recipe's bf16 is for its GPUs
    }
    overrides = [arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")]
    submitted = time.time()
    result = deps_orch("submit", spec, *root, *overrides, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "imagenet-deps"
    job_id = _job_id(run_dir)
    # Followed from the login side: the job's states and the driver's own lines, down to its cost table.
    assert f"Slurm job {job_id}" in result.stdout and f"[slurm] job {job_id}: RUNNING" in result.stdout
    assert "[imagenet-deps] SUCCEEDED" in result.stdout and "lost dev-h" in result.stdout
    assert _sacct_state(job_id) == "COMPLETED"

    # The allocation asked for what the spec said, through submitit's sbatch script.
    script = (run_dir / "slurm" / job_id / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --nodes=1" in script and "#SBATCH --cpus-per-task=2" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --time=15" in script and "#SBATCH --exclusive" in script and "export NCCL_DEBUG=WARN" in script
    assert "gpus-per-node" not in script and "submitit.core._submit" in script
    (head,) = _heads(run_dir)  # Ray's head started inside the allocation
    assert head["host"] and ":" in head["address"]

    ledger = _ledger(run_dir)
    assert list(ledger.epoch) == [0] and list(ledger.phase) == ["shrinking"] and ledger.images[0] == 24
    assert (ledger.devices == 2).all() and (ledger.device_type == "cpu").all()
    subnets = pq.read_table(run_dir / "subnets.parquet").to_pandas()
    assert len(subnets) == 2 and (subnets.test_images == 12).all() and (subnets.checkpoint_epoch == 0).all()
    assert _state(run_dir) == "SUCCEEDED"
    assert json.loads((run_dir / "plan.json").read_text())["cluster"]["slurm"]["sbatch"]["cpus-per-task"] == 2
    _assert_no_ray_left(run_dir)

    marker = json.loads((run_dir / "attempts" / "0.json").read_text())
    print(f"\nsubmit to first training step on the local Slurm: {marker['first_step_at'] - submitted:.1f}s")
