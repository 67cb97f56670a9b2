"""`deps-orch cost-report`: per run, what training and evaluation cost and what the subnets reached.

The columns follow Table 2 of the DepS paper.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from orchestrator.reports.table import Column
from orchestrator.storage.discovery import discover_runs, resolve_runs
from workers.rundir.forecast import load_forecast
from workers.rundir.holds import held_time
from workers.rundir.state import RunState, read_state
from workers.rundir.tables import RunStore

COLUMNS = [
    Column("run", "run"),
    Column("group", "group"),
    Column("method", "method"),
    Column("state", "state"),
    Column("device_type", "device"),
    Column("epochs", "epochs"),
    Column("device_minutes_per_epoch", "dev-min/epoch", ".3f"),
    Column("train_device_hours", "train dev-h", ".4f"),
    Column("train_dollars", "train $", ".4f"),
    Column("eval_device_hours", "eval dev-h", ".4f"),
    Column("eval_dollars", "eval $", ".4f"),
    Column("lost_device_hours", "lost dev-h", ".4f"),  # paid for, lost when an attempt died mid-epoch
    Column("lost_dollars", "lost $", ".4f"),
    # Held device time, split: useful (the epochs' own time) + overhead (start-up, stage changes, the forecast,
    # diagnostics, evaluation, idle) + lost = held, the bill; total $ is the held time's price.
    Column("useful_device_hours", "useful dev-h", ".4f"),
    Column("overhead_device_hours", "overhead dev-h", ".4f"),
    Column("held_device_hours", "held dev-h", ".4f"),
    Column("total_dollars", "total $", ".4f"),
    Column("forecast_device_hours", "forecast dev-h", ".4f"),  # measured at launch (forecast.json)
    Column("forecast_dollars", "forecast $", ".4f"),
    Column("forecast_error_pct", "actual vs forecast %", "+.1f"),  # held device-hours, once the run has succeeded
    Column("subnets", "subnets"),
    Column("smallest_top1", "smallest top-1", ".2f"),
    Column("smallest_mmacs", "smallest MMACs", ".2f"),
    Column("largest_top1", "largest top-1", ".2f"),
    Column("largest_mmacs", "largest MMACs", ".2f"),
]


def resolve_run_dirs(name_or_path: str, root: Path) -> list[Path]:
    """A run directory, a run name under root, or a comparison name (all its runs)."""
    return resolve_runs([name_or_path], root)


def _sum(table, column: str) -> float:
    return float(pc.sum(table[column]).as_py() or 0.0) if len(table) else 0.0


def run_costs(run_dir: Path) -> dict:
    store = RunStore(run_dir)
    epochs, subnets, lost = store.epochs(), store.subnets(), store.lost()
    row: dict = {"run": run_dir.name, "group": None, "method": None, "device_type": None}
    state = read_state(run_dir)
    row["state"] = state.state.value if state is not None else None
    for table in (lost, epochs, subnets):  # a run stopped before its first epoch has only lost work
        if len(table):
            row["method"] = table["method"][0].as_py()
            row["run"] = table["run"][0].as_py()
            row["group"] = table["group"][0].as_py()
    for table in (lost, epochs):
        if len(table):
            row["device_type"] = table["device_type"][0].as_py()
    n = len(epochs)
    train_hours = _sum(epochs, "device_hours")
    row.update(
        {
            "epochs": n,
            "device_minutes_per_epoch": train_hours * 60.0 / n if n else None,
            "train_device_hours": train_hours,
            "train_dollars": _sum(epochs, "dollars"),
            "eval_device_hours": _sum(subnets, "device_hours"),
            "eval_dollars": _sum(subnets, "dollars"),
            "subnets": len(subnets),
        }
    )
    row["lost_attempts"] = len(lost)
    row["lost_device_hours"] = _sum(lost, "device_hours")
    row["lost_dollars"] = _sum(lost, "dollars")
    row["total_dollars"] = row["train_dollars"] + row["eval_dollars"] + row["lost_dollars"]
    held = held_time(run_dir)
    if held is not None:  # a run from before holds were recorded has its ledger's sum as its total
        row.update(
            {
                "useful_device_hours": held.useful.device_hours,
                "useful_dollars": held.useful.dollars,
                "overhead_device_hours": held.overhead.device_hours,
                "overhead_dollars": held.overhead.dollars,
                "held_device_hours": held.held.device_hours,
                "held_dollars": held.held.dollars,
                "total_dollars": held.held.dollars,
            }
        )
    # The forecast is of the held time (work and overhead alike); a run from before holds, of its ledger's.
    actual = held.held.device_hours if held is not None else row["train_device_hours"] + row["eval_device_hours"]
    row.update(forecast_columns(run_dir, actual))
    if len(subnets):
        rows = sorted(subnets.select(["macs", "top1"]).to_pylist(), key=lambda r: r["macs"])
        row.update(
            {
                "smallest_top1": rows[0]["top1"],
                "smallest_mmacs": rows[0]["macs"] / 1e6,
                "largest_top1": rows[-1]["top1"],
                "largest_mmacs": rows[-1]["macs"] / 1e6,
            }
        )
    return row


def forecast_columns(run_dir: Path, actual_device_hours: float) -> dict:
    """The forecast measured at launch, and how far the finished run's device-hours ended from it."""
    forecast = load_forecast(run_dir)
    if forecast is None:
        return {}
    state = read_state(run_dir)
    done = state is not None and state.state is RunState.SUCCEEDED and forecast.total_device_hours > 0
    error = 100.0 * (actual_device_hours / forecast.total_device_hours - 1.0) if done else None
    return {
        "forecast_device_hours": forecast.total_device_hours,
        "forecast_dollars": forecast.total_dollars,
        "forecast_error_pct": error,
    }


def cost_report(runs: list[str], root: Path) -> list[dict]:
    """Runs, run directories or comparisons by name; with none, every run under the storage root."""
    dirs = resolve_runs(runs, root) if runs else [r.path for r in discover_runs(root)]
    return [run_costs(run_dir) for run_dir in dirs]
