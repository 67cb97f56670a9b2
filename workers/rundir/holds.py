"""Held devices: when a run's cluster or allocation held its devices, the time the bill is made of.

A hold is one stretch of a run holding its devices: a local cluster from before
Ray starts until it has stopped, or a Slurm allocation from the job script's
first line (Ray's start-up inside it included) until the driver ends. Each gets
one row in `holds.parquet`, keyed `(run, hold)`, written when the hold begins and
rewritten by a heartbeat (every HEARTBEAT_SECONDS) and when it ends, so a
controller that dies leaves its hold ending at its last heartbeat.

Every held second is one of: useful (the epochs' own wall time, in the ledger),
lost (work an attempt died with, `lost.parquet`) or overhead (everything else:
start-up, stage changes, the forecast, diagnostics, evaluation, idle), so the
three add up to the held time by construction and the bill is reconciled: held
seconds x devices x price is what `sacct` or a cloud invoice shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore

HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class HoldOwner:
    """Whose devices, how many, of what kind and at what price."""

    run: str
    method: str
    group: str | None
    kind: str  # "local cluster", "slurm allocation", "ray cluster"
    devices: int
    device_type: str
    price_per_device_hour: float


class DeviceHold:
    """A context manager: the run holds its devices from `since` (default now) until the block ends."""

    def __init__(self, run_dir: Path | RunDir, owner: HoldOwner, since: float | None = None) -> None:
        self.files, self.owner = as_run_dir(run_dir), owner
        self.started = since if since is not None else time.time()
        self.store = RunStore(self.files)
        self.hold = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _row(self, ended: float, open_: bool) -> dict:
        o = self.owner
        seconds = max(0.0, ended - self.started)
        usage = Usage.of(seconds, o.devices, o.price_per_device_hour)
        return {
            "run": o.run,
            "method": o.method,
            "group": o.group,
            "hold": self.hold,
            "kind": o.kind,
            "started_at": datetime.fromtimestamp(self.started, timezone.utc),
            "ended_at": datetime.fromtimestamp(ended, timezone.utc),
            "held_seconds": seconds,
            "devices": o.devices,
            "device_type": o.device_type,
            "price_per_device_hour": o.price_per_device_hour,
            "device_hours": usage.device_hours,
            "dollars": usage.dollars,
            "open": open_,
        }

    def write(self, open_: bool = True) -> None:
        self.store.record_holds([self._row(time.time(), open_)])

    def __enter__(self) -> DeviceHold:
        self.hold = len(self.store.holds())
        self.write()
        self._thread = threading.Thread(target=self._beat, name=f"hold-{self.owner.run}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.write()
            except OSError:
                pass  # a slow or full filesystem: the next beat, or the end, writes it

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write(open_=False)


@dataclass(frozen=True)
class HeldTime:
    """A run's held device time, split three ways; `useful + overhead + lost == held` by construction."""

    held: Usage
    useful: Usage
    lost: Usage

    @property
    def overhead(self) -> Usage:
        return Usage(
            self.held.device_hours - self.useful.device_hours - self.lost.device_hours,
            self.held.dollars - self.useful.dollars - self.lost.dollars,
        )


def held_time(run_dir: Path | RunDir) -> HeldTime | None:
    """The run's held time and its split; None for a run with no hold recorded (one from before holds)."""
    store = RunStore(run_dir)
    holds = store.holds().to_pylist()
    if not holds:
        return None
    useful = Usage()
    for row in store.epochs().select(["wall_seconds", "devices", "price_per_device_hour"]).to_pylist():
        useful = useful + Usage.of(row["wall_seconds"], row["devices"], row["price_per_device_hour"])
    return HeldTime(held=Usage.total(holds), useful=useful, lost=Usage.total(store.lost().to_pylist()))


def current_hold_start(run_dir: Path | RunDir) -> float | None:
    """When the run's latest hold began (a Unix time), or None if it has none."""
    holds = RunStore(run_dir).holds().select(["hold", "started_at"]).to_pylist()
    if not holds:
        return None
    return max(holds, key=lambda row: row["hold"])["started_at"].timestamp()
