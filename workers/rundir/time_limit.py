"""When the allocation a run trains in ends, as far as anyone has told it.

Two sources, the earlier end wins: the end known when the job started
(`END_TIME_ENV`, which the Slurm head sets from `SLURM_JOB_END_TIME` or from
its start plus the time limit; a user can set it to rehearse a limit), and a
notice file in the run directory, written when a warning arrives (Slurm's USR2
`signal_seconds` before the limit, or a preempting cluster's; the Slurm head
writes the warning's own time: stop now). The training
workers look at both between steps (`workers/epoch_guard.py`): a run finishes
its epoch when that fits, else saves a step checkpoint, and the requeued job
resumes from it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir

END_TIME_ENV = "DEPS_ORCH_END_TIME"  # Unix seconds at which the devices are taken away
# Seconds kept free before the end: the workers return, the checkpoint is stored, Ray stops, the job requeues.
STOP_MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class TimeLimit:
    """A training job's allocation end: known at start (`ends_at`), or later from the run's notice file."""

    ends_at: float | None
    margin_seconds: float = STOP_MARGIN_SECONDS

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TimeLimit | None:
        """The limit this process runs under: END_TIME_ENV, else SLURM_JOB_END_TIME; None outside an allocation
        that ends (a local cluster, a long-lived Ray cluster), where no notice can come either."""
        environ = os.environ if environ is None else environ
        for name in (END_TIME_ENV, "SLURM_JOB_END_TIME"):
            value = environ.get(name)
            if value:
                try:
                    return cls(float(value))
                except ValueError:
                    raise ValueError(f"{name}={value!r} is not a Unix time in seconds") from None
        if environ.get("SLURM_JOB_ID"):
            return cls(None)  # under Slurm with no end known: the warning's notice still can come
        return None

    def end(self, run_dir: Path | RunDir) -> float | None:
        """The earliest end known now, the run's notice included."""
        notice = read_notice(run_dir)
        ends = [t for t in (self.ends_at, notice) if t is not None]
        return min(ends) if ends else None


def write_notice(run_dir: Path | RunDir, ends_at: float, source: str) -> None:
    files = as_run_dir(run_dir)
    files.write_json(
        files.time_limit_notice,
        {"ends_at": ends_at, "source": source, "noticed_at": datetime.now(timezone.utc).isoformat()},
    )


def read_notice(run_dir: Path | RunDir) -> float | None:
    files = as_run_dir(run_dir)
    if not files.time_limit_notice.exists():
        return None
    data = files.read_json(files.time_limit_notice)
    try:
        return float(data["ends_at"])
    except (TypeError, KeyError, ValueError):
        return None  # a notice cut short: the next look finds it whole


def clock_time(at: float) -> str:
    """`at` (Unix seconds) as the wall-clock time a log line shows."""
    return time.strftime("%H:%M:%S", time.localtime(at))
