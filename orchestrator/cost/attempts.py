"""Each training attempt's marker, and the device-hours lost when an attempt dies mid-epoch.

Rank 0 of every attempt (a Ray Train worker group; a restart, a resubmission or
a requeued Slurm job starts a new one) keeps `<run_dir>/attempts/<n>.json`: when
it started, when its last epoch ended (that epoch's checkpoint and ledger row
exist then), the epoch in flight, and a heartbeat written at most every
HEARTBEAT_SECONDS while it trains. An attempt that reaches the end of its loop
marks itself finished; one the budget stops in the middle of an epoch charges
that epoch as lost work itself, then marks itself finished.

When the next attempt starts, the markers of earlier attempts that never
finished tell what was paid for and lost: the time from an attempt's last
completed epoch (or from its own start, set-up included, if it completed none)
to its last heartbeat. Each such attempt gets one row in `lost.parquet`, keyed
`(run, attempt)`, so reading the markers again never adds a row twice. The
time after the last heartbeat (at most HEARTBEAT_SECONDS) and the time a
cluster spends starting outside the training loop are not counted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.cost.pricing import price_usage
from orchestrator.storage.run_store import RunStore

HEARTBEAT_SECONDS = 2.0
ATTEMPTS_DIR = "attempts"


@dataclass
class AttemptMarker:
    attempt: int
    run: str
    method: str
    group: str | None
    devices: int
    device_type: str
    price_per_device_hour: float
    started_at: float
    heartbeat_at: float
    last_epoch_end: float | None = None
    epoch: int | None = None  # the epoch in flight (or the last one finished)
    first_step_at: float | None = None
    finished: bool = False

    @property
    def lost_seconds(self) -> float:
        return max(0.0, self.heartbeat_at - (self.last_epoch_end or self.started_at))

    def lost_row(self, detected_by: int) -> dict:
        usage = price_usage(self.lost_seconds, self.devices, self.price_per_device_hour)
        return {
            "run": self.run,
            "method": self.method,
            "group": self.group,
            "attempt": self.attempt,
            "epoch": self.epoch,
            "started_at": _utc(self.started_at),
            "lost_from": _utc(self.last_epoch_end or self.started_at),
            "last_heartbeat": _utc(self.heartbeat_at),
            "lost_seconds": self.lost_seconds,
            "devices": self.devices,
            "device_type": self.device_type,
            "device_hours": usage.device_hours,
            "price_per_device_hour": self.price_per_device_hour,
            "dollars": usage.dollars,
            "detected_by_attempt": detected_by,
            "recorded_at": datetime.now(timezone.utc),
        }


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def marker_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / ATTEMPTS_DIR / f"{attempt}.json"


def read_markers(run_dir: Path) -> list[AttemptMarker]:
    markers = []
    for path in sorted((run_dir / ATTEMPTS_DIR).glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        try:
            markers.append(AttemptMarker(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # a marker cut short by a crash: nothing reliable to charge
    return markers


class AttemptLog:
    """Rank 0's view of its own attempt: the marker it keeps up to date."""

    def __init__(self, run_dir: Path, marker: AttemptMarker) -> None:
        self.run_dir = run_dir
        self.marker = marker

    @classmethod
    def begin(
        cls,
        run_dir: Path,
        attempt: int,
        started_at: float,
        *,
        run: str,
        method: str,
        group: str | None,
        devices: int,
        device_type: str,
        price_per_device_hour: float,
    ) -> AttemptLog:
        """Start this attempt's marker, after charging the lost time of the earlier attempts that died."""
        record_lost_attempts(run_dir, attempt)
        marker = AttemptMarker(
            attempt, run, method, group, devices, device_type, price_per_device_hour, started_at, time.time()
        )
        log = cls(run_dir, marker)
        log._write()
        return log

    def heartbeat(self, epoch: int) -> None:
        now = time.time()
        first = self.marker.first_step_at is None
        if first:
            self.marker.first_step_at = now
        if first or epoch != self.marker.epoch or now - self.marker.heartbeat_at >= HEARTBEAT_SECONDS:
            self.marker.epoch, self.marker.heartbeat_at = epoch, now
            self._write()

    def epoch_done(self, epoch: int) -> None:
        now = time.time()
        self.marker.epoch, self.marker.last_epoch_end, self.marker.heartbeat_at = epoch, now, now
        self._write()

    def abandon_epoch(self, epoch: int) -> None:
        """This attempt stops in the middle of `epoch` on purpose: charge the epoch so far as lost work now."""
        self.marker.epoch, self.marker.heartbeat_at = epoch, time.time()
        RunStore(self.run_dir).record_lost([self.marker.lost_row(self.marker.attempt)])
        self.finish()

    def finish(self) -> None:
        self.marker.finished, self.marker.heartbeat_at = True, time.time()
        self._write()

    def _write(self) -> None:
        path = marker_path(self.run_dir, self.marker.attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self.marker)))
        os.replace(tmp, path)


def record_lost_attempts(run_dir: Path, current_attempt: int) -> list[dict]:
    """Write a lost-work row for every earlier attempt that did not finish and has none yet; returns the new rows."""
    store = RunStore(run_dir)
    charged = {row["attempt"] for row in store.lost().select(["attempt"]).to_pylist()}
    rows = [
        m.lost_row(current_attempt)
        for m in read_markers(run_dir)
        if m.attempt < current_attempt and not m.finished and m.attempt not in charged
    ]
    store.record_lost(rows)
    return rows
