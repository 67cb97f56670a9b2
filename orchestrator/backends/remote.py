"""What the backends that run a submission's driver elsewhere share: the spec it is sent, the run files it
is announced in, and following its log.

Following prints the driver's own output (progress lines, the final cost table)
and the job's state changes. Ctrl-C (or SIGTERM) only detaches: a Slurm job or
a Ray job keeps running, and submitting the same spec again follows it instead
of starting a second one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.backends.base import Echo
from orchestrator.controller import record_plan
from orchestrator.plan import Plan
from orchestrator.runner import Submission
from orchestrator.spec import JobSpec
from workers.rundir.state import RunState, read_state, write_state


def remote_spec_json(spec: JobSpec) -> str:
    """The spec with every path made absolute, for a driver whose working directory is elsewhere."""
    data = spec.model_dump(mode="json")
    data["storage"]["root"] = str(Path(spec.storage.root).expanduser().resolve())
    if spec.dataset.root is not None:
        data["dataset"]["root"] = str(Path(spec.dataset.root).expanduser().resolve())
    if spec.cost.catalog is not None:
        data["cost"]["catalog"] = str(Path(spec.cost.catalog).expanduser().resolve())
    return json.dumps(data)


def cluster_python(spec: JobSpec) -> str:
    return spec.cluster.python or sys.executable


def announce(submission: Submission, reason: str) -> None:
    """The runs are queued elsewhere: their plans and PENDING state, with where they went."""
    for index, plan in enumerate(submission.plans):
        record_plan(plan, submission.description(index))
        write_state(plan.run_dir, RunState.PENDING, reason)


def mark_ended(plans: list[Plan], reason: str) -> None:
    """A job that ended without its driver saying so (killed, node failure): runs still marked active stop here."""
    for plan in plans:
        record = read_state(plan.run_dir)
        if record is not None and not record.state.is_terminal:
            write_state(plan.run_dir, RunState.INTERRUPTED, reason)


def echo_new_lines(path: Path, offset: int, echo: Echo) -> int:
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


def driver_errors(path: Path) -> None:
    """The driver's own one-line errors (its stderr is in the job's .err log, among Ray's and submitit's lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    errors = [line for line in lines if line.startswith("deps-orch: ")]
    if errors:  # the log is appended to by every allocation of a requeued job: the last one is this end's
        print(errors[-1], file=sys.stderr)
