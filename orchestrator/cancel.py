"""`deps-orch cancel RUN`: stop a run, keeping its last checkpoint (submitting it again resumes it).

By default the controller gets SIGTERM and stops at once (the epoch in flight is
lost, its last checkpoint is kept). With `after_epoch`, or when the controller
runs on another host, the workers stop at the next epoch end, after its
checkpoint; a backend whose driver runs elsewhere may stop its job at once too
(`stop_job`: scancel, `ray job stop`).
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import time
from collections.abc import Callable

from orchestrator.errors import UserError
from workers.rundir.layout import RunDir
from workers.rundir.state import RunState, read_state, write_state
from workers.rundir.stops import request_cancel


def cancel_run(
    files: RunDir,
    after_epoch: bool = False,
    wait_seconds: float = 120.0,
    echo: Callable[[str], None] = print,
    stop_job: Callable[[], str | None] | None = None,
) -> int:
    """Cancel the run; returns the exit code. `stop_job` stops a job elsewhere and says how, or returns None."""
    name = files.name
    record = read_state(files)
    if record is None:
        raise UserError(f"{name}: no state.json in {files.path}; the run never started")
    if record.state is RunState.SUCCEEDED:
        raise UserError(f"{name}: already SUCCEEDED; nothing to cancel")
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    alive = record.controller_alive()
    if record.state.is_terminal or alive is False:
        was = f"it was {record.state.value}" + (
            "" if record.state.is_terminal else f", its controller pid {record.pid} gone"
        )
        write_state(files, RunState.CANCELLED, f"cancelled by {who} ({was})")
        echo(f"[{name}] CANCELLED ({was}); submit it again to resume from its last checkpoint")
        return 0
    request_cancel(files, who)
    stopped_by = stop_job() if stop_job is not None and not after_epoch else None
    if stopped_by is not None:
        echo(f"[{name}] cancelling: {stopped_by}; the last checkpoint is kept")
    elif alive and not after_epoch:
        os.kill(record.pid, signal.SIGTERM)
        echo(f"[{name}] cancelling: sent SIGTERM to its controller (pid {record.pid}); the last checkpoint is kept")
    else:
        where = "" if alive else f" (its controller runs on {record.host})"
        echo(f"[{name}] cancel requested{where}: it stops after the epoch in flight, with that epoch's checkpoint")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        now = read_state(files)
        if now is not None and now.state.is_terminal:
            if now.state is RunState.CANCELLED:
                echo(f"[{name}] CANCELLED: {now.reason}; submit it again to resume from its last checkpoint")
                return 0
            echo(f"[{name}] ended {now.state.value} before the cancel took effect")
            return 1
        time.sleep(0.5)
    echo(f"[{name}] not stopped after {wait_seconds:.0f}s; the cancel request stands (deps-orch status {name})")
    return 1
