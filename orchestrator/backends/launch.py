"""`deps-orch submit` for runs that execute elsewhere: send the run to Slurm or to a Ray cluster and follow it.

Following prints the driver's own output (progress lines, the final cost table)
and the job's state changes. Ctrl-C (or SIGTERM) only detaches: a Slurm job or
a Ray job keeps running, and submitting the same spec again follows it instead
of starting a second one. `--detach` returns right after submission.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import UserError
from orchestrator.plan import Plan
from orchestrator.spec import JobSpec
from orchestrator.state import RunState, read_state, write_state

if TYPE_CHECKING:
    import submitit
    from ray.job_submission import JobSubmissionClient

Echo = Callable[[str], None]
RAY_JOB_FILE = "ray-job.json"
EXPOSE_WARNING = (
    "cluster.expose_dashboard: the Ray dashboard listens on all interfaces; its Jobs API runs arbitrary code "
    "as this user for anyone who can reach the port and holds the token. Use it only on a trusted network."
)


def runs_elsewhere(spec: JobSpec) -> bool:
    """True for Slurm and for a Ray cluster reached through its Jobs API; `local` and `ray` + `auto` run here."""
    return spec.cluster.backend == "slurm" or (spec.cluster.backend == "ray" and spec.cluster.address != "auto")


def launch(spec: JobSpec, plans: list[Plan], spec_label: str, detach: bool, echo: Echo = print) -> int:
    if spec.cluster.expose_dashboard:
        print(f"deps-orch: warning: {EXPOSE_WARNING}", file=sys.stderr)
    if spec.cluster.backend == "slurm":
        return _slurm(spec, plans, spec_label, detach, echo)
    return _ray_job(spec, plans, spec_label, detach, echo)


def _label(spec: JobSpec) -> str:
    return spec.group or spec.run


def _announce(plans: list[Plan], reason: str) -> None:
    for plan in plans:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "plan.json").write_text(json.dumps(plan.describe(), indent=2))
        write_state(plan.run_dir / "state.json", RunState.PENDING, reason)


def _mark_ended(plans: list[Plan], reason: str) -> None:
    """A job that ended without its driver saying so (killed, node failure): runs still marked active stop here."""
    for plan in plans:
        record = read_state(plan.run_dir / "state.json")
        if record is not None and not record.state.is_terminal:
            write_state(plan.run_dir / "state.json", RunState.INTERRUPTED, reason)


def _echo_new(path: Path, offset: int, echo: Echo) -> int:
    """Echo the complete lines added to a log file since `offset`; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode(errors="replace").splitlines():
        if not line.startswith("submitit INFO"):  # submitit's own bookkeeping
            echo(line)
    return offset + end


def _driver_errors(path: Path) -> None:
    """The driver's own one-line errors (its stderr is in the job's .err log, among Ray's and submitit's lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    errors = [line for line in lines if line.startswith("deps-orch: ")]
    if errors:  # the log is appended to by every allocation of a requeued job: the last one is this end's
        print(errors[-1], file=sys.stderr)


# -- Slurm ------------------------------------------------------------------------------------------------------


def _slurm(spec: JobSpec, plans: list[Plan], spec_label: str, detach: bool, echo: Echo) -> int:
    from orchestrator.backends.slurm import active_job, submit_job, work_dir_for

    label, slurm = _label(spec), spec.cluster.slurm
    assert slurm is not None
    work_dir = work_dir_for(plans[0].run_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job = active_job(work_dir)
    if job is not None:
        echo(f"[{label}] already in Slurm as job {job.job_id}; following it (scancel {job.job_id} stops it)")
    else:
        try:
            job = submit_job(spec, work_dir)
        except RuntimeError as error:
            raise UserError(f"cluster.slurm: {error}") from None
        _announce(plans, f"queued as Slurm job {job.job_id}")
        gpus = f"{slurm.gpus_per_node} GPUs, " if slurm.gpus_per_node else ""
        echo(
            f"[{label}] Slurm job {job.job_id}: {slurm.nodes} node(s), {gpus}{spec.cluster.slurm_cpus_per_node} CPUs "
            f"per node, {slurm.time_minutes} min per allocation; log {_head(job).paths.stdout}"
        )
    if detach:
        echo(
            f"[{label}] detached: submit {spec_label} again to follow it, scancel {job.job_id} to stop it "
            "(the run resumes from its last checkpoint when submitted again)"
        )
        return 0
    try:
        return _follow_slurm(job, plans, label, echo)
    except KeyboardInterrupt:
        print(
            f"deps-orch: detached; Slurm job {job.job_id} keeps running. Submit {spec_label} again to follow it, "
            f"scancel {job.job_id} to stop it.",
            file=sys.stderr,
        )
        return 130


def _head(job: submitit.Job) -> submitit.Job:
    return job.task(0) if job.num_tasks > 1 else job


def _follow_slurm(job: submitit.Job, plans: list[Plan], label: str, echo: Echo) -> int:
    from orchestrator.backends.slurm import ACTIVE_STATES, job_state

    head = _head(job)
    offset, last_state, next_poll, started = 0, None, 0.0, time.time()
    while not head.paths.result_pickle.exists():
        offset = _echo_new(head.paths.stdout, offset, echo)
        now = time.time()
        if now >= next_poll:
            state = job_state(job.job_id)
            if state != last_state:
                echo(f"[slurm] job {job.job_id}: {state}")
                last_state = state
            if state not in ACTIVE_STATES and state != "UNKNOWN":
                time.sleep(2.0)  # a result written just as the job ended
                if head.paths.result_pickle.exists():
                    break
                _echo_new(head.paths.stdout, offset, echo)
                _driver_errors(head.paths.stderr)
                reason = f"Slurm job {job.job_id} ended {state}"
                _mark_ended(plans, reason)
                print(f"deps-orch: {reason}; submit again to resume from the last checkpoint", file=sys.stderr)
                return 130 if state.startswith("CANCELLED") else 1
            next_poll = now + min(30.0, max(2.0, (now - started) / 4))
        time.sleep(1.0)
    _echo_new(head.paths.stdout, offset, echo)
    # The result is written just before the task exits: wait for Slurm to release the allocation too.
    deadline = time.time() + 120
    while job_state(job.job_id) in ACTIVE_STATES and time.time() < deadline:
        time.sleep(1.0)
    try:
        result = head.result()
    except Exception as error:  # the job function raised: its trace is in the job's log
        lines = [line for line in str(error).splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line.startswith(("-", " "))), str(error))
        print(f"deps-orch: error: Slurm job {job.job_id} failed: {last} (log: {head.paths.stderr})", file=sys.stderr)
        _mark_ended(plans, f"Slurm job {job.job_id} failed")
        return 1
    code = int(result.get("code") or 0)
    if code != 0:
        _driver_errors(head.paths.stderr)
    return code


# -- Ray Jobs API ------------------------------------------------------------------------------------------------


def _ray_client(address: str) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    from orchestrator.ray_env import auth_token

    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {auth_token()}"})
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise UserError(f"cluster.address: cannot reach the Ray Jobs API at {address}: {first}") from None


def _ray_job(spec: JobSpec, plans: list[Plan], spec_label: str, detach: bool, echo: Echo) -> int:
    from ray.job_submission import JobStatus

    from orchestrator.backends.slurm import cluster_python, remote_spec_json

    label, address = _label(spec), spec.cluster.address
    assert address is not None
    client = _ray_client(address)
    record_path = plans[0].run_dir / RAY_JOB_FILE
    job_id = None
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("address") == address:
            try:
                status = client.get_job_status(record["submission_id"])
            except Exception:
                status = None
            if status in (JobStatus.PENDING, JobStatus.RUNNING):
                job_id = record["submission_id"]
                echo(f"[{label}] already running as Ray job {job_id} on {address}; following it")
    if job_id is None:
        entrypoint = shlex.join(
            [cluster_python(spec), "-u", "-m", "orchestrator.backends.driver", "--json", remote_spec_json(spec)]
        )
        submission_id = f"deps-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "PYTHONUNBUFFERED": "1"}},
                metadata={"deps_orch_run": label},
            )
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise UserError(f"cluster.address: the Ray Jobs API at {address} refused the job: {first}") from None
        _announce(plans, f"submitted as Ray job {job_id} to {address}")
        record_path.write_text(json.dumps({"submission_id": job_id, "address": address, "submitted_at": time.time()}))
        echo(f"[{label}] Ray job {job_id} on {address}")
    if detach:
        echo(f"[{label}] detached: submit {spec_label} again to follow it; `ray job stop {job_id}` stops it")
        return 0
    try:
        return _follow_ray_job(client, job_id, plans, echo)
    except KeyboardInterrupt:
        print(
            f"deps-orch: detached; Ray job {job_id} keeps running. Submit {spec_label} again to follow it, "
            f"`ray job stop --address {address} {job_id}` to stop it.",
            file=sys.stderr,
        )
        return 130


def _follow_ray_job(client: JobSubmissionClient, job_id: str, plans: list[Plan], echo: Echo) -> int:
    from ray.job_submission import JobStatus

    shown, last = 0, None
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        complete = logs[: logs.rfind("\n") + 1] if not status.is_terminal() else logs
        for line in complete[shown:].splitlines():
            echo(line)
        shown = max(shown, len(complete))
        if status != last:
            echo(f"[ray] job {job_id}: {status.value}")
            last = status
        if status.is_terminal():
            break
        time.sleep(2.0)
    info = client.get_job_info(job_id)
    if status == JobStatus.SUCCEEDED:
        return 0
    code = info.driver_exit_code
    if status == JobStatus.STOPPED:
        _mark_ended(plans, f"Ray job {job_id} was stopped")
        return 130
    if code is None:
        _mark_ended(plans, f"Ray job {job_id} failed: {info.message}")
        print(f"deps-orch: error: Ray job {job_id} failed: {info.message}", file=sys.stderr)
        return 1
    return int(code)
