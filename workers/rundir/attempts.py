"""Each training attempt's marker, and the device-hours lost when an attempt dies mid-epoch.

Rank 0 of every attempt (a Ray Train worker group; a restart, a resubmission or
a requeued Slurm job starts a new one) keeps a marker file: when it started, when
its last epoch ended (that epoch's checkpoint and ledger row exist then), the
epoch in flight, and a heartbeat written at most every HEARTBEAT_SECONDS while it
trains, by a background thread, so a slow shared filesystem never stalls a step.
An attempt that reaches the end of its loop marks itself finished; one the budget
stops in the middle of an epoch charges that epoch as lost work itself, then
marks itself finished.

When the next attempt starts, the markers of earlier attempts that never
finished tell what was paid for and lost: the time from the end of the last
epoch of that attempt the new one keeps (it resumes after it; an epoch whose
checkpoint the dying attempt had not got registered is trained again and is
lost work, its ledger row replaced), or from the attempt's own start, set-up
included, if it kept none, to its last heartbeat. Each such attempt gets one
row in `lost.parquet`, keyed `(run, attempt)`, so reading the markers again never adds a row twice. The
time after the last heartbeat (at most HEARTBEAT_SECONDS) and the time a
cluster spends starting outside the training loop are not counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore

HEARTBEAT_SECONDS = 2.0


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
    epoch_ends: dict[str, float] = field(default_factory=dict)  # each epoch this attempt finished: when

    def _kept_end(self, resume_epoch: int | None) -> float | None:
        """When the last epoch of this attempt that is kept ended: one before `resume_epoch` (None: its last)."""
        if resume_epoch is None or not self.epoch_ends:
            return self.last_epoch_end
        kept = [at for epoch, at in self.epoch_ends.items() if int(epoch) < resume_epoch]
        return max(kept) if kept else None

    def lost_from(self, resume_epoch: int | None = None) -> float:
        """Where the lost work begins: the end of the last epoch kept, or this attempt's start."""
        return self._kept_end(resume_epoch) or self.started_at

    def lost_seconds(self, resume_epoch: int | None = None) -> float:
        """From `lost_from` to this attempt's last heartbeat."""
        return max(0.0, self.heartbeat_at - self.lost_from(resume_epoch))

    def lost_epoch(self, resume_epoch: int | None = None) -> int | None:
        """The first epoch whose work is lost: the first one this attempt finished that is not kept, else the one in
        flight."""
        redone = [int(epoch) for epoch in self.epoch_ends if resume_epoch is not None and int(epoch) >= resume_epoch]
        return min(redone) if redone else self.epoch

    def lost_row(self, detected_by: int, resume_epoch: int | None = None) -> dict:
        lost_from = self.lost_from(resume_epoch)
        lost_seconds = max(0.0, self.heartbeat_at - lost_from)
        usage = Usage.of(lost_seconds, self.devices, self.price_per_device_hour)
        return {
            "run": self.run,
            "method": self.method,
            "group": self.group,
            "attempt": self.attempt,
            "epoch": self.lost_epoch(resume_epoch),
            "started_at": _utc(self.started_at),
            "lost_from": _utc(lost_from),
            "last_heartbeat": _utc(self.heartbeat_at),
            "lost_seconds": lost_seconds,
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


def next_attempt(run_dir: Path | RunDir) -> int:
    """This attempt's number (0, 1, ...), counted in the run directory."""
    files = as_run_dir(run_dir)
    data = files.read_json(files.attempt_counter)
    attempt = int(data["attempts"]) if isinstance(data, dict) and "attempts" in data else 0
    files.write_json(files.attempt_counter, {"attempts": attempt + 1})
    return attempt


def read_markers(run_dir: Path | RunDir) -> list[AttemptMarker]:
    files = as_run_dir(run_dir)
    markers = []
    paths = sorted(files.attempts.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    for path in paths:
        data = files.read_json(path)
        try:
            markers.append(AttemptMarker(**data))
        except TypeError:
            continue  # a marker cut short by a crash: nothing reliable to charge
    return markers


class AttemptLog:
    """Rank 0's view of its own attempt: the marker it keeps up to date."""

    def __init__(self, run_dir: Path | RunDir, marker: AttemptMarker) -> None:
        self.files = as_run_dir(run_dir)
        self.marker = marker
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._beat, name="attempt-heartbeat", daemon=True)

    @classmethod
    def begin(
        cls,
        run_dir: Path | RunDir,
        attempt: int,
        started_at: float,
        *,
        run: str,
        method: str,
        group: str | None,
        devices: int,
        device_type: str,
        price_per_device_hour: float,
        resume_epoch: int | None = None,
    ) -> AttemptLog:
        """Start this attempt's marker, after charging the lost time of the earlier attempts that died (this one
        resumes at `resume_epoch`: what they trained from there on is lost)."""
        record_lost_attempts(run_dir, attempt, resume_epoch)
        marker = AttemptMarker(
            attempt, run, method, group, devices, device_type, price_per_device_hour, started_at, time.time()
        )
        log = cls(run_dir, marker)
        log._write()
        log._writer.start()
        return log

    def heartbeat(self, epoch: int) -> None:
        """A step of `epoch` is done; the background writer records it within HEARTBEAT_SECONDS."""
        now = time.time()
        with self._lock:
            if self.marker.first_step_at is None:
                self.marker.first_step_at = now
            self.marker.epoch, self.marker.heartbeat_at = epoch, now
            self._dirty = True

    def epoch_done(self, epoch: int) -> None:
        now = time.time()
        with self._lock:
            self.marker.epoch, self.marker.last_epoch_end, self.marker.heartbeat_at = epoch, now, now
            self.marker.epoch_ends[str(epoch)] = now
        self._write()

    def abandon_epoch(self, epoch: int) -> None:
        """This attempt stops in the middle of `epoch` on purpose: charge the epoch so far as lost work now."""
        with self._lock:
            self.marker.epoch, self.marker.heartbeat_at = epoch, time.time()
        RunStore(self.files).record_lost([self.marker.lost_row(self.marker.attempt)])
        self.finish()

    def finish(self) -> None:
        with self._lock:
            self.marker.finished, self.marker.heartbeat_at = True, time.time()
        self._stop.set()
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if self._dirty:
                self._write()

    def _write(self) -> None:
        with self._lock:
            data, self._dirty = asdict(self.marker), False
        self.files.write_json(self.files.attempt_marker(self.marker.attempt), data)


def record_lost_attempts(run_dir: Path | RunDir, current_attempt: int, resume_epoch: int | None = None) -> list[dict]:
    """Write a lost-work row for every earlier attempt that did not finish and has none yet; returns the new rows.
    `resume_epoch`: where the current attempt starts (None: after each dead attempt's last finished epoch)."""
    store = RunStore(run_dir)
    charged = {row["attempt"] for row in store.lost().select(["attempt"]).to_pylist()}
    rows = [
        m.lost_row(current_attempt, resume_epoch)
        for m in read_markers(run_dir)
        if m.attempt < current_attempt and not m.finished and m.attempt not in charged
    ]
    store.record_lost(rows)
    return rows
