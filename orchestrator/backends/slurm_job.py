"""The Slurm side of the Slurm backend: the job submitit runs on every node, and asking Slurm about it.

On the login node, `submit_job` hands submitit a `SlurmRayJob` and the sbatch
parameters of `cluster.slurm`. Slurm runs the job as one task per node:

- node 0 starts a Ray head (in its own session, see ray_node.py), writes the
  head's address to a rendezvous file in the run's `slurm/` folder (a shared
  filesystem, like the run directory itself), and runs the driver,
  `python -m orchestrator.driver`, which runs the plan's stages
  against that cluster exactly as a local submit would;
- the other nodes join the head and wait until node 0 says it is done;
- every node stops its Ray session on the way out, and a reaper does so if
  the task is killed.

Time limits and preemption follow submitit's protocol: Slurm sends USR2
`signal_seconds` before the time limit (or a preempting cluster sends it);
submitit then calls `checkpoint()`, which resubmits the same callable, and
requeues the job. The requeued job starts Ray again and the driver resumes
from the run's last checkpoint. SIGTERM (scancel, or a preemption that Slurm
requeues itself) stops the driver cleanly and leaves no result behind, so the
login side tells a cancelled job (sacct: CANCELLED) from a requeued one.

Nothing trained is thrown away at the limit: the driver knows when the
allocation ends (`END_TIME_ENV`), so training stops at an epoch end when the
next epoch would not fit, and the head requeues the job at once; on USR2 the
head first writes the end into each run's notice file and waits (up to the
warning's time less a margin) for the training workers to save a step
checkpoint and the driver to end, then requeues.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from orchestrator.backends.attached import EXPECTED_NODES_ENV, NODES_TIMEOUT_ENV
from orchestrator.backends.ray_node import RayNode, free_port, start_command, start_node, visible_gpus
from orchestrator.backends.remote import cluster_python, remote_spec_json
from orchestrator.backends.sbatch import submitit_parameters
from orchestrator.device_holds import HELD_SINCE_ENV
from orchestrator.ray_env import prepare_ray_environment
from orchestrator.runner import STOPPED_EXIT
from orchestrator.spec import JobSpec
from workers.rundir.layout import read_json, write_json
from workers.rundir.state import RunState
from workers.rundir.time_limit import END_TIME_ENV, STOP_MARGIN_SECONDS, write_notice

JOB_FILE = "job.json"
SIGTERM_LINE = b"[slurm] stopped by SIGTERM (scancel, or a preemption Slurm requeues itself)\n"
# Exit code of a task whose driver was stopped by SIGTERM: no submitit result, so a requeue is not mistaken for an end.
INTERRUPTED_EXIT = 143
TIME_LIMIT_EXIT = STOPPED_EXIT[RunState.TIME_LIMIT]  # the driver's: training stopped before the time limit
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD"}


@dataclass
class NodeLayout:
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    expose_dashboard: bool
    nodes_timeout_s: float
    time_limit_s: float  # of one allocation
    signal_seconds: float  # USR2 comes this long before the limit


class SlurmRayJob(submitit.helpers.Checkpointable):
    """The function Slurm runs on every node of the allocation (one task per node)."""

    def __init__(
        self, spec_json: str, work_dir: str, python: str, layout: NodeLayout, run_dirs: list[str] | None = None
    ) -> None:
        self.spec_json = spec_json
        self.work_dir = work_dir
        self.python = python
        self.layout = layout
        self.run_dirs = run_dirs or []  # where a time-limit warning is written
        self._driver: subprocess.Popen | None = None  # the head's driver, while it runs (not pickled)
        self._requeued = False  # submitit requeues this allocation (USR2): the head must not do it again

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_driver", "_requeued")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._driver, self._requeued = None, False

    def __call__(self) -> dict:
        prepare_ray_environment()
        env = submitit.JobEnvironment()
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        folder = Path(self.work_dir) / str(env.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        rendezvous = folder / f"ray-head-{restart}.json"
        done = folder / f"ray-done-{restart}.json"
        log = folder / f"ray-node{env.global_rank}-{restart}.log"
        gpus = visible_gpus()
        num_gpus = len(gpus) if "CUDA_VISIBLE_DEVICES" in os.environ else self.layout.gpus_per_node
        num_cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.layout.cpus_per_node)
        if env.global_rank == 0:
            return self._head(folder, rendezvous, done, log, num_cpus, num_gpus, str(env.job_id), restart)
        return self._worker(rendezvous, done, log, num_cpus, num_gpus)

    def _head(
        self, folder: Path, rendezvous: Path, done: Path, log: Path, cpus: int, gpus: int, job_id: str, restart: str
    ) -> dict:
        port = free_port()
        temp_dir = Path(tempfile.gettempdir()) / f"deps-ray-{job_id}-{restart}"
        node = start_node(
            start_command(
                head_address=None,
                port=port,
                num_cpus=cpus,
                num_gpus=gpus,
                expose_dashboard=self.layout.expose_dashboard,
                temp_dir=temp_dir,
                python=self.python,
            ),
            log,
        )
        driver: subprocess.Popen | None = None
        code: int | None = None
        started = time.time()
        terminated = _note_sigterm()
        try:
            node.wait_ready(300)
            address = f"{_node_ip()}:{port}"
            write_json(
                rendezvous,
                {"address": address, "session": node.session, "host": socket.gethostname(), "started": started},
            )
            spec_path = folder / "spec.json"
            spec_path.write_text(self.spec_json)
            environ = {
                **os.environ,
                "RAY_ADDRESS": address,
                EXPECTED_NODES_ENV: str(self.layout.nodes),
                NODES_TIMEOUT_ENV: str(self.layout.nodes_timeout_s),
                HELD_SINCE_ENV: str(allocation_start()),  # the driver's run holds the devices since then
                END_TIME_ENV: str(allocation_end(self.layout.time_limit_s)),
            }
            print(
                f"[slurm] Ray head at {address} ({cpus} CPUs, {gpus} GPUs) in {time.time() - started:.1f}s", flush=True
            )
            driver = subprocess.Popen([self.python, "-u", "-m", "orchestrator.driver", str(spec_path)], env=environ)
            self._driver = driver
            code = driver.wait()
        finally:
            if driver is not None and driver.poll() is None:  # submitit is requeueing: stop the driver cleanly
                driver.send_signal(signal.SIGTERM)
                try:
                    driver.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    driver.kill()
            self._driver = None
            write_json(done, {"code": None if code == TIME_LIMIT_EXIT else code})
            node.stop()
            if code in (0, TIME_LIMIT_EXIT):  # Ray's logs stay on the node only when something went wrong
                shutil.rmtree(temp_dir, ignore_errors=True)
        if code == TIME_LIMIT_EXIT and not terminated and not self._requeued:  # stopped before the limit: requeue now
            print("[slurm] training stopped before the time limit: requeueing this job", flush=True)
            subprocess.run(["scontrol", "requeue", job_id], check=False)
            raise SystemExit(INTERRUPTED_EXIT)  # Slurm stops this allocation; the requeued one resumes
        if terminated or self._requeued:  # the SIGTERM's line was written when it came
            raise SystemExit(INTERRUPTED_EXIT)
        return {"code": code}

    def _worker(self, rendezvous: Path, done: Path, log: Path, cpus: int, gpus: int) -> dict:
        deadline = time.time() + self.layout.nodes_timeout_s
        while not rendezvous.exists():
            if done.exists() or time.time() > deadline:
                raise RuntimeError(f"no Ray head address in {rendezvous} within {self.layout.nodes_timeout_s:.0f}s")
            time.sleep(1.0)
        address = json.loads(rendezvous.read_text())["address"]
        node: RayNode = start_node(
            start_command(
                head_address=address,
                port=None,
                num_cpus=cpus,
                num_gpus=gpus,
                expose_dashboard=False,
                python=self.python,
            ),
            log,
        )
        try:
            node.wait_ready(300)
            while not done.exists() and node.alive():
                time.sleep(2.0)
        finally:
            node.stop()
        if not done.exists():
            raise RuntimeError("this node's Ray stopped before the head finished")
        code = json.loads(done.read_text()).get("code")
        if code is None:  # the head was requeued or stopped: leave no result
            raise SystemExit(INTERRUPTED_EXIT)
        return {"code": code}

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """USR2 (the time limit comes, or a preemption): tell the training, let it save its step, then requeue."""
        driver, warned = self._driver, time.time()
        if driver is not None and driver.poll() is None:
            # The training is to be out now, not at the limit: its checkpoint, the driver's end, Ray's stop and
            # the requeue all come out of the warning's seconds.
            source = f"Slurm's USR2, {self.layout.signal_seconds:.0f}s before the allocation ends"
            for run_dir in self.run_dirs:
                write_notice(Path(run_dir), warned, source)
            wait = max(0.0, self.layout.signal_seconds - STOP_MARGIN_SECONDS)
            print(f"[slurm] USR2: the allocation ends in {self.layout.signal_seconds:.0f}s; saving a step checkpoint")
            try:
                driver.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                print(f"[slurm] the driver did not end within {wait:.0f}s; requeueing with its last checkpoint")
        print("[slurm] preempted or at the time limit: requeueing; training resumes from its last checkpoint")
        self._requeued = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def allocation_end(time_limit_s: float, environ: dict[str, str] | None = None) -> float:
    """When this allocation's devices are taken away: Slurm's own end where it says (23.02 and later; it
    follows a changed time limit only at the job's start), else its start plus the time limit asked for."""
    environ = os.environ if environ is None else environ
    end = environ.get("SLURM_JOB_END_TIME")
    if end:
        return float(end)
    return allocation_start(environ) + time_limit_s


def allocation_start(environ: dict[str, str] | None = None) -> float:
    """When this allocation began holding its nodes: Slurm's own time where it says (23.02 and later), else when
    this task's process started (the job script's first step)."""
    environ = os.environ if environ is None else environ
    start = environ.get("SLURM_JOB_START_TIME")
    if start:
        return float(start)
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # starttime, after boot
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _note_sigterm() -> list[bool]:
    """A list that becomes [True] once SIGTERM arrives; submitit's own SIGTERM handler still runs.

    The line saying so is written when the signal comes, not after the clean-up: Slurm's SIGKILL follows its
    SIGTERM by KillWait seconds, which stopping the driver and Ray can outlast on a loaded node.
    """
    seen: list[bool] = []
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: object) -> None:
        if not seen:  # unbuffered: the main thread may be inside a print of its own
            with contextlib.suppress(OSError, ValueError):
                os.write(sys.stdout.fileno(), SIGTERM_LINE)
        seen.append(True)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return seen


def _node_ip() -> str:
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def submit_job(spec: JobSpec, work_dir: Path, run_dirs: list[Path] | None = None) -> submitit.SlurmJob:
    """Ask Slurm for the allocation; returns submitit's job. Raises RuntimeError with sbatch's own message."""
    slurm = spec.cluster.slurm
    assert slurm is not None
    python = cluster_python(spec)
    executor = submitit.SlurmExecutor(
        folder=work_dir / "%j", max_num_timeout=slurm.max_timeouts, python=shlex.quote(python)
    )
    executor.update_parameters(**submitit_parameters(spec))
    layout = NodeLayout(
        nodes=slurm.nodes,
        cpus_per_node=spec.cluster.slurm_cpus_per_node,
        gpus_per_node=slurm.gpus_per_node,
        expose_dashboard=spec.cluster.expose_dashboard,
        nodes_timeout_s=slurm.nodes_timeout_s,
        time_limit_s=slurm.time_minutes * 60.0,
        signal_seconds=float(slurm.signal_seconds),
    )
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error too; ours is one line
            job = executor.submit(
                SlurmRayJob(remote_spec_json(spec), str(work_dir), python, layout, [str(d) for d in run_dirs or []])
            )
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise RuntimeError(f"sbatch refused the job: {lines[-1] if lines else type(error).__name__}") from None
    write_json(work_dir / JOB_FILE, {"job_id": job.job_id, "nodes": slurm.nodes, "submitted_at": time.time()})
    return job


def job_state(job_id: str) -> str:
    """The job's state from sacct (PENDING, RUNNING, COMPLETED, CANCELLED, ...); UNKNOWN if sacct has none yet."""
    try:
        result = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return "UNKNOWN"
    return lines[-1].split()[0]


def active_job(work_dir: Path) -> submitit.SlurmJob | None:
    """The run's Slurm job from an earlier submit, if it is still queued or running."""
    path = work_dir / JOB_FILE
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or job_state(str(record["job_id"])) not in ACTIVE_STATES:
        return None
    return submitit.SlurmJob(folder=work_dir / "%j", job_id=str(record["job_id"]), tasks=tuple(range(record["nodes"])))
