"""The run's state, kept in `<run_dir>/state.json`; every change is also a line of the run's log.

Besides the state and its reason, the record says which controller owns the run
(process id and host, while it runs) and how long the run has been running over
all its submissions, so `deps-orch status` can show elapsed time, spot a
controller that died without updating the file, and `deps-orch cancel` can reach
the controller. `write_state` is the one place a state changes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir


class RunState(str, Enum):
    PENDING = "PENDING"
    FORECASTING = "FORECASTING"
    TRAINING = "TRAINING"
    EVALUATING = "EVALUATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"
    CANCELLED = "CANCELLED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    TIME_LIMIT = "TIME_LIMIT"  # stopped before its allocation's time limit; a requeue resumes it
    STOPPED_EARLY = "STOPPED_EARLY"  # a sweep's scheduler stopped the trial: its ledger is kept, no evaluation

    @property
    def is_terminal(self) -> bool:
        """No controller works on the run any more (it may still be resumed, unless it SUCCEEDED)."""
        return self in (
            RunState.SUCCEEDED,
            RunState.FAILED,
            RunState.INTERRUPTED,
            RunState.CANCELLED,
            RunState.BUDGET_EXHAUSTED,
            RunState.TIME_LIMIT,
            RunState.STOPPED_EARLY,
        )

    @property
    def is_resumable(self) -> bool:
        """Submitting the run again continues it from its last checkpoint."""
        return self.is_terminal and self is not RunState.SUCCEEDED


@dataclass(frozen=True)
class StateRecord:
    state: RunState
    reason: str
    updated_at: str
    started_at: str | None = None  # this submission's start, while a controller works on the run
    elapsed_before: float = 0.0  # seconds the earlier submissions ran
    pid: int | None = None
    host: str | None = None

    def elapsed_seconds(self, now: datetime | None = None) -> float:
        """Wall seconds the run has been worked on, over all its submissions."""
        if self.started_at is None:
            return self.elapsed_before
        now = now or datetime.now(timezone.utc)
        return self.elapsed_before + max(0.0, (now - datetime.fromisoformat(self.started_at)).total_seconds())

    def controller_alive(self) -> bool | None:
        """Whether the owning controller process still runs; None when that cannot be told from this host."""
        if self.state.is_terminal or self.pid is None:
            return False
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def to_dict(self) -> dict:
        return {**asdict(self), "state": self.state.value}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _write(files: RunDir, record: StateRecord, previous: StateRecord | None) -> None:
    # The log line first: whoever reads the new state (`logs --follow`) finds its line already there.
    if previous is None or (previous.state, previous.reason) != (record.state, record.reason):
        reason = f": {record.reason}" if record.reason else ""
        files.append_log(f"state {record.state.value}{reason}", datetime.fromisoformat(record.updated_at))
    files.write_json(files.state, record.to_dict())


def begin_submission(run_dir: Path | RunDir) -> StateRecord:
    """The calling process takes the run over: PENDING, with its pid and host and a fresh start time."""
    files = as_run_dir(run_dir)
    previous = read_state(files)
    now = _now()
    elapsed = 0.0
    if previous is not None:
        # A controller that died without closing its submission is counted until its last state change.
        last = datetime.fromisoformat(previous.updated_at) if previous.updated_at else now
        elapsed = previous.elapsed_seconds(last)
    record = StateRecord(
        RunState.PENDING, "", now.isoformat(), now.isoformat(), elapsed, os.getpid(), socket.gethostname()
    )
    _write(files, record, previous)
    return record


def write_state(run_dir: Path | RunDir, state: RunState, reason: str = "") -> None:
    """Record a new state. A terminal state closes the submission: its time is added to the elapsed total."""
    files = as_run_dir(run_dir)
    previous = read_state(files)
    now = _now()
    started = previous.started_at if previous is not None else None
    elapsed = previous.elapsed_before if previous is not None else 0.0
    pid = previous.pid if previous is not None else None
    host = previous.host if previous is not None else None
    if state.is_terminal:
        if previous is not None:
            elapsed = previous.elapsed_seconds(now)
        started, pid, host = None, None, None
    _write(files, StateRecord(state, reason, now.isoformat(), started, elapsed, pid, host), previous)


def read_state(run_dir: Path | RunDir) -> StateRecord | None:
    files = as_run_dir(run_dir)
    data = files.read_json(files.state)
    if not isinstance(data, dict) or "state" not in data:
        return None
    return StateRecord(
        RunState(data["state"]),
        data.get("reason", ""),
        data.get("updated_at", ""),
        data.get("started_at"),
        float(data.get("elapsed_before") or 0.0),
        data.get("pid"),
        data.get("host"),
    )
