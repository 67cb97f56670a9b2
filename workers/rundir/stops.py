"""Stopping a run on purpose: the user's cancel request, and the record of a stop that happened.

`deps-orch cancel` writes a cancel request. The training workers look for it at
every epoch end (after the epoch's checkpoint and ledger row), as they look at the
budget; when either says stop, rank 0 records the stop (the state the run ends in
and why), every rank returns, and the training job raises `RunStopped` instead of
starting anything more. Submitting the run again clears both files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir
from workers.rundir.state import RunState


@dataclass(frozen=True)
class StopRecord:
    state: RunState  # CANCELLED, BUDGET_EXHAUSTED or TIME_LIMIT
    reason: str
    epoch: int  # the last epoch trained and checkpointed; -1 if none was


class RunStopped(Exception):
    """Training stopped before its end on purpose; the run keeps its last checkpoint and resumes from it."""

    def __init__(self, record: StopRecord) -> None:
        super().__init__(record.reason)
        self.record = record


def request_cancel(run_dir: Path | RunDir, who: str) -> None:
    files = as_run_dir(run_dir)
    files.write_json(
        files.cancel_request, {"requested_by": who, "requested_at": datetime.now(timezone.utc).isoformat()}
    )


def cancel_request(run_dir: Path | RunDir) -> str | None:
    """The reason to record if a cancel was requested, else None."""
    files = as_run_dir(run_dir)
    if not files.cancel_request.exists():
        return None
    data = files.read_json(files.cancel_request)
    data = data if isinstance(data, dict) else {}
    return f"cancelled by {data.get('requested_by', 'a user')} at {data.get('requested_at', 'an unknown time')}"


def record_stop(run_dir: Path | RunDir, record: StopRecord) -> None:
    files = as_run_dir(run_dir)
    files.write_json(files.stopped, {**asdict(record), "state": record.state.value})


def read_stop(run_dir: Path | RunDir) -> StopRecord | None:
    files = as_run_dir(run_dir)
    data = files.read_json(files.stopped)
    if not isinstance(data, dict):
        return None
    return StopRecord(RunState(data["state"]), data["reason"], int(data["epoch"]))


def raise_if_stopped(run_dir: Path | RunDir) -> None:
    record = read_stop(run_dir)
    if record is not None:
        raise RunStopped(record)


def clear_stop(run_dir: Path | RunDir) -> None:
    """A new submission: an earlier cancel request or stop no longer applies."""
    files = as_run_dir(run_dir)
    files.cancel_request.unlink(missing_ok=True)
    files.stopped.unlink(missing_ok=True)
    files.time_limit_notice.unlink(missing_ok=True)
