"""The Slurm backend: submitit asks Slurm for the nodes, Ray starts inside the allocation, the driver runs there.

On the login node `launch` submits the job (`slurm_job.py`) or finds the one
already running this run, and follows it: its state (`PENDING`, `RUNNING`,
`REQUEUED`, ...) and the driver's own lines. Inside the allocation the driver
attaches to the job's Ray cluster (`cluster()`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import AbstractContextManager

import submitit

from orchestrator.backends.attached import attached_cluster
from orchestrator.backends.base import Backend, Echo
from orchestrator.backends.remote import announce, driver_errors, echo_new_lines, mark_ended
from orchestrator.backends.sbatch import sbatch_options
from orchestrator.backends.slurm_job import ACTIVE_STATES, JOB_FILE, active_job, job_state, submit_job
from orchestrator.cancel import cancel_run
from orchestrator.errors import UserError
from orchestrator.plan import Plan
from orchestrator.runner import Submission
from workers.rundir.layout import RunDir, read_json


class SlurmBackend(Backend):
    name = "slurm"
    hold_kind = "slurm allocation"

    def describe(self, plan: Plan) -> dict:
        cluster = self.spec.cluster
        slurm = cluster.slurm
        assert slurm is not None
        dashboard = "all interfaces (cluster.expose_dashboard)" if cluster.expose_dashboard else "127.0.0.1"
        return {
            "slurm": {
                "nodes": slurm.nodes,
                "gpus_per_node": slurm.gpus_per_node,
                "gpus": slurm.nodes * slurm.gpus_per_node,
                "cpus_per_node": cluster.slurm_cpus_per_node,
                "workers_per_node": cluster.slurm_workers_per_node,
                "time_minutes": slurm.time_minutes,
                "requeues_after_timeout": slurm.max_timeouts,
                "dollars_per_hour": round(plan.training.dollars_per_hour, 4),
                "ray": f"head on the first node, workers on the others; dashboard on {dashboard}",
                "sbatch": sbatch_options(self.spec),
            }
        }

    def cluster(self) -> AbstractContextManager[None]:
        return attached_cluster()

    def follow(self, submission: Submission, echo: Echo) -> int | None:
        job = active_job(submission.plans[0].files.slurm)
        if job is None:
            return None
        echo(f"[{submission.name}] already in Slurm as job {job.job_id}; following it (scancel {job.job_id} stops it)")
        return self._follow_or_detach(job, submission, echo)

    def launch(self, submission: Submission, echo: Echo) -> int:
        followed = self.follow(submission, echo)
        if followed is not None:
            return followed
        slurm, work_dir = self.spec.cluster.slurm, submission.plans[0].files.slurm
        assert slurm is not None
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            job = submit_job(self.spec, work_dir, [p.run_dir for p in submission.plans])
        except RuntimeError as error:
            raise UserError(f"cluster.slurm: {error}") from None
        announce(submission, f"queued as Slurm job {job.job_id}")
        gpus = f"{slurm.gpus_per_node} GPUs, " if slurm.gpus_per_node else ""
        echo(
            f"[{submission.name}] Slurm job {job.job_id}: {slurm.nodes} node(s), {gpus}"
            f"{self.spec.cluster.slurm_cpus_per_node} CPUs per node, {slurm.time_minutes} min per allocation; "
            f"log {_head(job).paths.stdout}"
        )
        return self._follow_or_detach(job, submission, echo)

    @classmethod
    def cancel(cls, run_dir: RunDir, after_epoch: bool, wait_seconds: float, echo: Echo) -> int:
        def scancel() -> str | None:
            record = read_json(run_dir.slurm / JOB_FILE)
            if not isinstance(record, dict) or active_job(run_dir.slurm) is None:
                return None
            job_id = str(record["job_id"])
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)
            return f"scancel {job_id}"

        return cancel_run(run_dir, after_epoch, wait_seconds, echo, stop_job=scancel)

    def _follow_or_detach(self, job: submitit.Job, submission: Submission, echo: Echo) -> int:
        if submission.detach:
            echo(
                f"[{submission.name}] detached: submit {submission.label} again to follow it, scancel {job.job_id} "
                "to stop it (the run resumes from its last checkpoint when submitted again)"
            )
            return 0
        try:
            return _follow(job, submission.plans, echo)
        except KeyboardInterrupt:
            print(
                f"deps-orch: detached; Slurm job {job.job_id} keeps running. Submit {submission.label} again to "
                f"follow it, scancel {job.job_id} to stop it.",
                file=sys.stderr,
            )
            return 130


def _head(job: submitit.Job) -> submitit.Job:
    return job.task(0) if job.num_tasks > 1 else job


def _follow(job: submitit.Job, plans: list[Plan], echo: Echo) -> int:
    head = _head(job)
    offset, last_state, next_poll, started = 0, None, 0.0, time.monotonic()
    while not head.paths.result_pickle.exists():
        offset = echo_new_lines(head.paths.stdout, offset, echo)
        now = time.monotonic()
        if now >= next_poll:
            state = job_state(job.job_id)
            if state != last_state:
                echo(f"[slurm] job {job.job_id}: {state}")
                last_state = state
            if state not in ACTIVE_STATES and state != "UNKNOWN":
                time.sleep(2.0)  # a result written just as the job ended
                if head.paths.result_pickle.exists():
                    break
                echo_new_lines(head.paths.stdout, offset, echo)
                driver_errors(head.paths.stderr)
                reason = f"Slurm job {job.job_id} ended {state}"
                mark_ended(plans, reason)
                print(f"deps-orch: {reason}; submit again to resume from the last checkpoint", file=sys.stderr)
                return 130 if state.startswith("CANCELLED") else 1
            next_poll = now + min(30.0, max(2.0, (now - started) / 4))
        time.sleep(1.0)
    echo_new_lines(head.paths.stdout, offset, echo)
    # The result is written just before the task exits: wait for Slurm to release the allocation too.
    deadline = time.monotonic() + 120
    while job_state(job.job_id) in ACTIVE_STATES and time.monotonic() < deadline:
        time.sleep(1.0)
    try:
        result = head.result()
    except Exception as error:  # the job function raised: its trace is in the job's log
        lines = [line for line in str(error).splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line.startswith(("-", " "))), str(error))
        print(f"deps-orch: error: Slurm job {job.job_id} failed: {last} (log: {head.paths.stderr})", file=sys.stderr)
        mark_ended(plans, f"Slurm job {job.job_id} failed")
        return 1
    code = int(result.get("code") or 0)
    if code != 0:
        driver_errors(head.paths.stderr)
    return code
