"""The Ray-cluster backend: a cluster that runs already (a Ray head, a KubeRay RayCluster, a cluster launcher's).

With `cluster.address` a dashboard URL, the run's driver is submitted through the
Ray Jobs API (token authentication on) and followed; its submission id is kept
in the run directory, so submitting again follows the running job instead of
starting another. With `address: auto` the driver is this process, attached to
the cluster of the node it runs on.
"""

from __future__ import annotations

import shlex
import sys
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from orchestrator.backends.attached import attached_cluster
from orchestrator.backends.base import Backend, Echo
from orchestrator.backends.remote import announce, cluster_python, mark_ended, remote_spec_json
from orchestrator.cancel import cancel_run
from orchestrator.errors import UserError
from orchestrator.plan import Plan
from orchestrator.ray_env import auth_token
from orchestrator.runner import Submission, run_here
from workers.rundir.layout import RunDir

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient


class RayClusterBackend(Backend):
    name = "ray"

    @property
    def address(self) -> str:
        address = self.spec.cluster.address
        assert address is not None  # the spec requires it for this backend
        return address

    @property
    def here(self) -> bool:
        return self.address == "auto"

    def describe(self, plan: Plan) -> dict:
        how = "in this process" if self.here else "as a Ray job (Jobs API, token auth)"
        return {"ray": {"address": self.address, "driver": how}}

    def cluster(self) -> AbstractContextManager[None]:
        return attached_cluster()

    def _running_job(self, client: JobSubmissionClient, files: RunDir) -> str | None:
        return _running_job(client, files, self.address)

    def follow(self, submission: Submission, echo: Echo) -> int | None:
        if self.here:
            return None
        client = _client(self.address)
        job_id = self._running_job(client, submission.plans[0].files)
        if job_id is None:
            return None
        echo(f"[{submission.name}] already running as Ray job {job_id} on {self.address}; following it")
        return self._follow_or_detach(client, job_id, submission, echo)

    def launch(self, submission: Submission, echo: Echo) -> int:
        if self.here:
            return run_here(submission, self.cluster(), self.hold_kind)
        followed = self.follow(submission, echo)
        if followed is not None:
            return followed
        client = _client(self.address)
        entrypoint = shlex.join(
            [cluster_python(self.spec), "-u", "-m", "orchestrator.driver", "--json", remote_spec_json(self.spec)]
        )
        submission_id = f"deps-{submission.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "PYTHONUNBUFFERED": "1"}},
                metadata={"deps_orch_run": submission.name},
            )
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise UserError(f"cluster.address: the Ray Jobs API at {self.address} refused the job: {first}") from None
        announce(submission, f"submitted as Ray job {job_id} to {self.address}")
        files = submission.plans[0].files
        files.write_json(files.ray_job, {"submission_id": job_id, "address": self.address, "submitted_at": time.time()})
        echo(f"[{submission.name}] Ray job {job_id} on {self.address}")
        return self._follow_or_detach(client, job_id, submission, echo)

    @classmethod
    def cancel(cls, run_dir: RunDir, after_epoch: bool, wait_seconds: float, echo: Echo) -> int:
        def stop_job() -> str | None:
            record = run_dir.read_json(run_dir.ray_job)  # only a run sent through the Jobs API has one
            if not isinstance(record, dict):
                return None
            client = _client(record["address"])
            job_id = _running_job(client, run_dir, record["address"])
            if job_id is None:
                return None
            client.stop_job(job_id)
            return f"ray job stop {job_id}"

        return cancel_run(run_dir, after_epoch, wait_seconds, echo, stop_job=stop_job)

    def _follow_or_detach(self, client: JobSubmissionClient, job_id: str, submission: Submission, echo: Echo) -> int:
        if submission.detach:
            echo(
                f"[{submission.name}] detached: submit {submission.label} again to follow it; "
                f"`ray job stop {job_id}` stops it"
            )
            return 0
        try:
            return _follow(client, job_id, submission.plans, echo)
        except KeyboardInterrupt:
            print(
                f"deps-orch: detached; Ray job {job_id} keeps running. Submit {submission.label} again to follow "
                f"it, `ray job stop --address {self.address} {job_id}` to stop it.",
                file=sys.stderr,
            )
            return 130


def _running_job(client: JobSubmissionClient, files: RunDir, address: str) -> str | None:
    """The run's Ray job on the cluster at `address`, if it is still pending or running."""
    from ray.job_submission import JobStatus

    record = files.read_json(files.ray_job)
    if not isinstance(record, dict) or record.get("address") != address:
        return None
    try:
        status = client.get_job_status(record["submission_id"])
    except Exception:
        return None
    return record["submission_id"] if status in (JobStatus.PENDING, JobStatus.RUNNING) else None


def _client(address: str) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {auth_token()}"})
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise UserError(f"cluster.address: cannot reach the Ray Jobs API at {address}: {first}") from None


def _follow(client: JobSubmissionClient, job_id: str, plans: list[Plan], echo: Echo) -> int:
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
        mark_ended(plans, f"Ray job {job_id} was stopped")
        return 130
    if code is None:
        mark_ended(plans, f"Ray job {job_id} failed: {info.message}")
        print(f"deps-orch: error: Ray job {job_id} failed: {info.message}", file=sys.stderr)
        return 1
    return int(code)
