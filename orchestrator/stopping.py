"""Stopping a run cleanly between epochs: the user's cancel request, and the record of a stop that happened.

`deps-orch cancel` writes `<run_dir>/cancel.json`. The training workers look for
it at every epoch end (after the epoch's checkpoint and ledger row), as they look
at the budget; when either says stop, rank 0 writes `<run_dir>/stopped.json` with
the state the run ends in and why, every rank returns, and the training job raises
`RunStopped` instead of starting anything more. The controller records the state.
Submitting the run again clears both files and resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.state import RunState
from orchestrator.storage.run_store import RunStore

if TYPE_CHECKING:
    from orchestrator.plan import Plan

CANCEL_FILE = "cancel.json"
STOPPED_FILE = "stopped.json"


@dataclass(frozen=True)
class StopRecord:
    state: RunState  # CANCELLED or BUDGET_EXHAUSTED
    reason: str
    epoch: int  # the last epoch trained and checkpointed; -1 if none was


class RunStopped(Exception):
    """Training stopped before its end on purpose; the run keeps its last checkpoint and resumes from it."""

    def __init__(self, record: StopRecord) -> None:
        super().__init__(record.reason)
        self.record = record


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def request_cancel(run_dir: Path, who: str) -> None:
    _write_json(run_dir / CANCEL_FILE, {"requested_by": who, "requested_at": datetime.now(timezone.utc).isoformat()})


def cancel_request(run_dir: Path) -> str | None:
    """The reason to record if a cancel was requested, else None."""
    path = run_dir / CANCEL_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        data = {}
    return f"cancelled by {data.get('requested_by', 'a user')} at {data.get('requested_at', 'an unknown time')}"


def record_stop(run_dir: Path, record: StopRecord) -> None:
    _write_json(run_dir / STOPPED_FILE, {**asdict(record), "state": record.state.value})


def read_stop(run_dir: Path) -> StopRecord | None:
    path = run_dir / STOPPED_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return StopRecord(RunState(data["state"]), data["reason"], int(data["epoch"]))


def raise_if_stopped(run_dir: Path) -> None:
    record = read_stop(run_dir)
    if record is not None:
        raise RunStopped(record)


def clear_stop(run_dir: Path) -> None:
    """A new submission: an earlier cancel request or stop no longer applies."""
    for name in (CANCEL_FILE, STOPPED_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _last_epoch(run_dir: Path) -> int:
    epochs = RunStore(run_dir).epochs().select(["epoch"]).to_pylist()
    return max((r["epoch"] for r in epochs), default=-1)


def check_before_training(plan: Plan) -> None:
    """Raise RunStopped if the budget cannot pay for the next epoch and the set-up of the job that trains it."""
    from workers.budget import check_epoch

    done = {r["epoch"] for r in RunStore(plan.run_dir).epochs().select(["epoch"]).to_pylist()}
    coming = [(e, phase) for phase, first, last in plan.phases for e in range(first, last + 1) if e not in done]
    if not coming:
        return
    epoch, phase = min(coming)
    verdict = check_epoch(plan.spec.budget, plan.run_dir, epoch, phase, new_job=True)
    if verdict is not None:
        raise RunStopped(StopRecord(RunState.BUDGET_EXHAUSTED, verdict, _last_epoch(plan.run_dir)))


def check_before_evaluation(plan: Plan) -> None:
    """Raise RunStopped if a cancel was requested, or the budget cannot pay for the evaluation still to do."""
    from orchestrator.forecast import load_forecast
    from workers.budget import check_evaluation

    reason = cancel_request(plan.run_dir)
    if reason is not None:
        raise RunStopped(StopRecord(RunState.CANCELLED, f"{reason}, before evaluation", _last_epoch(plan.run_dir)))
    forecast = load_forecast(plan.run_dir)
    planned = forecast.eval_subnets if forecast is not None else len(plan.subnets)
    left = max(0, planned - len(RunStore(plan.run_dir).subnets()))
    verdict = check_evaluation(plan.spec.budget, plan.run_dir, left)
    if verdict is not None:
        raise RunStopped(StopRecord(RunState.BUDGET_EXHAUSTED, verdict, _last_epoch(plan.run_dir)))


def cancel_run(
    run_dir: Path, after_epoch: bool = False, wait_seconds: float = 120.0, echo: Callable[[str], None] = print
) -> int:
    """`deps-orch cancel RUN`: stop a run, keeping its last checkpoint; returns the exit code.

    By default the controller gets SIGTERM and stops at once (the epoch in flight is
    lost, its last checkpoint is kept). With `after_epoch`, or when the controller
    runs on another host, the workers stop at the next epoch end, after its checkpoint.
    """
    import getpass
    import signal
    import socket
    import time

    from orchestrator.errors import UserError
    from orchestrator.state import read_state, write_state

    state_path, name = run_dir / "state.json", run_dir.name
    record = read_state(state_path)
    if record is None:
        raise UserError(f"{name}: no state.json in {run_dir}; the run never started")
    if record.state is RunState.SUCCEEDED:
        raise UserError(f"{name}: already SUCCEEDED; nothing to cancel")
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    alive = record.controller_alive()
    if record.state.is_terminal or alive is False:
        was = f"it was {record.state.value}" + (
            "" if record.state.is_terminal else f", its controller pid {record.pid} gone"
        )
        write_state(state_path, RunState.CANCELLED, f"cancelled by {who} ({was})")
        echo(f"[{name}] CANCELLED ({was}); submit it again to resume from its last checkpoint")
        return 0
    request_cancel(run_dir, who)
    if alive and not after_epoch:
        os.kill(record.pid, signal.SIGTERM)
        echo(f"[{name}] cancelling: sent SIGTERM to its controller (pid {record.pid}); the last checkpoint is kept")
    else:
        where = "" if alive else f" (its controller runs on {record.host})"
        echo(f"[{name}] cancel requested{where}: it stops after the epoch in flight, with that epoch's checkpoint")
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        now = read_state(state_path)
        if now is not None and now.state.is_terminal:
            if now.state is RunState.CANCELLED:
                echo(f"[{name}] CANCELLED: {now.reason}; submit it again to resume from its last checkpoint")
                return 0
            echo(f"[{name}] ended {now.state.value} before the cancel took effect")
            return 1
        time.sleep(0.5)
    echo(f"[{name}] not stopped after {wait_seconds:.0f}s; the cancel request stands (deps-orch status {name})")
    return 1
