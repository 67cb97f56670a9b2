"""The run's state, kept in <run_dir>/state.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path


class RunState(str, Enum):
    PENDING = "PENDING"
    TRAINING = "TRAINING"
    EVALUATING = "EVALUATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.INTERRUPTED)


@dataclass(frozen=True)
class StateRecord:
    state: RunState
    reason: str
    updated_at: str


def write_state(path: Path, state: RunState, reason: str = "") -> None:
    record = {"state": state.value, "reason": reason, "updated_at": datetime.now(timezone.utc).isoformat()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def read_state(path: Path) -> StateRecord | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return StateRecord(RunState(data["state"]), data.get("reason", ""), data.get("updated_at", ""))
