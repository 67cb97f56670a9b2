"""What a run has spent, and what its coming epochs will take, from its ledger and its forecast.

`EpochCostEstimator` joins the forecast with the epochs the ledger already holds:
what the next epoch of a phase will take, and what the rest of the run will cost.
The budget check, `deps-orch status` and the dashboard metrics all use it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.rundir.forecast import Forecast
from workers.rundir.layout import RunDir
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore


def ledger_spend(epoch_rows: Sequence[dict], subnet_rows: Sequence[dict] = (), lost_rows: Sequence[dict] = ()) -> Usage:
    """What the ledger says a run has spent: its epochs, its evaluated subnets, and work lost to failures."""
    return Usage.total([*epoch_rows, *subnet_rows, *lost_rows])


def ledger_rows(run_dir: Path | RunDir) -> tuple[list[dict], list[dict], list[dict]]:
    """The run's epoch rows (by epoch), subnet rows and lost-work rows."""
    store = RunStore(run_dir)
    return store.epoch_rows(), store.subnets().to_pylist(), store.lost().to_pylist()


class EpochCostEstimator:
    """What coming epochs will take: the measured epochs of a phase when there are some, else the forecast.

    The forecast of a phase not yet reached is scaled by how far the measured
    epochs strayed from their own forecast (the `ratio`), so a machine that runs
    slower than when it was measured shows up in every later estimate.
    """

    def __init__(self, forecast: Forecast | None, epoch_rows: Sequence[dict]) -> None:
        self.forecast = forecast
        self.rows = sorted(epoch_rows, key=lambda r: r["epoch"])
        last = self.rows[-1] if self.rows else None
        self.devices = forecast.devices if forecast else (last["devices"] if last else 0)
        self.price = forecast.price_per_device_hour if forecast else (last["price_per_device_hour"] if last else 0.0)
        measured = planned = 0.0
        if forecast is not None:
            for row in self.rows:
                expected = forecast.epoch_seconds(row["phase"])
                if expected:
                    measured, planned = measured + row["wall_seconds"], planned + expected
        self.ratio = measured / planned if planned > 0 else None
        overheads = [r["overhead_seconds"] for r in self.rows if r["overhead_seconds"] > 0]
        self.setup_seconds = (
            statistics.mean(overheads) if overheads else (forecast.setup_seconds if forecast is not None else 0.0)
        )

    def epoch_seconds(self, phase: str, cautious: bool = False) -> float | None:
        """Expected wall seconds of an epoch of `phase`; `cautious` takes the slowest plausible figure."""
        recent = [r["wall_seconds"] for r in self.rows if r["phase"] == phase][-3:]
        planned = self.forecast.epoch_seconds(phase) if self.forecast is not None else None
        if planned is not None and self.ratio is not None:
            planned *= self.ratio
        if recent:
            seen = max(recent) if cautious else statistics.mean(recent)
            return max(seen, planned) if cautious and planned is not None else seen
        if planned is not None:
            return planned
        walls = [r["wall_seconds"] for r in self.rows]
        if not walls:
            return None
        return max(walls) if cautious else statistics.mean(walls)

    def cost(self, seconds: float) -> Usage:
        return Usage.of(seconds, self.devices, self.price)


@dataclass(frozen=True)
class Outlook:
    """A run's spend so far, and what the rest will take by the forecast and the epochs measured so far."""

    spent: Usage
    epochs_done: int
    epochs_total: int
    remaining: Usage
    remaining_seconds: float | None  # wall, training and evaluation; None without any estimate

    @property
    def total(self) -> Usage:
        return self.spent + self.remaining


def outlook(
    forecast: Forecast | None,
    phases: Sequence[tuple[str, int, int]],
    epoch_rows: Sequence[dict],
    subnet_rows: Sequence[dict] = (),
    running: bool = False,
    lost_rows: Sequence[dict] = (),
) -> Outlook:
    """`phases` are (phase, first epoch, last epoch). One training job trains every stage of a run, so a run
    that is not running now pays one more set-up when it resumes, and one that runs pays none.
    """
    estimator = EpochCostEstimator(forecast, epoch_rows)
    done = {r["epoch"] for r in epoch_rows}
    total_epochs = max((last + 1 for _, _, last in phases), default=len(done))
    seconds: float | None = 0.0
    for name, first, last in phases:
        left = sum(1 for e in range(first, last + 1) if e not in done)
        if left:
            per_epoch = estimator.epoch_seconds(name)
            seconds = None if per_epoch is None or seconds is None else seconds + left * per_epoch
    next_epoch = min((e for e in range(total_epochs) if e not in done), default=None)
    setups = 0
    if next_epoch is not None:
        setups = 0 if running else 1
    train_seconds = None if seconds is None else seconds + setups * estimator.setup_seconds
    if train_seconds is not None and forecast is not None and next_epoch is not None:
        # A run not running starts its cluster again; the diagnostics still to take, in proportion.
        train_seconds += (0.0 if running else forecast.startup_seconds) + forecast.diagnostics_seconds * (
            (total_epochs - len(done)) / max(1, total_epochs)
        )
    remaining = estimator.cost(train_seconds or 0.0)
    eval_wall = 0.0
    if forecast is not None and forecast.eval_subnets:
        left = max(0, forecast.eval_subnets - len(subnet_rows))
        per_subnet = forecast.eval_seconds / forecast.eval_subnets
        remaining = remaining + Usage.of(left * per_subnet, forecast.eval_devices, forecast.eval_price_per_device_hour)
        eval_wall = left * per_subnet / max(1, min(forecast.eval_workers, left or 1))
        if left:  # the evaluation workers start, while the run holds all its devices
            setup = forecast.eval_setup_seconds
            held = max(forecast.devices, forecast.eval_devices)
            remaining = remaining + Usage.of(setup, held, forecast.eval_price_per_device_hour)
            eval_wall += setup
    return Outlook(
        spent=ledger_spend(epoch_rows, subnet_rows, lost_rows),
        epochs_done=len(done),
        epochs_total=total_epochs,
        remaining=remaining,
        remaining_seconds=None if train_seconds is None else train_seconds + eval_wall,
    )
