"""`deps-orch cost-report`: per run, what training and evaluation cost and what the subnets reached.

The columns follow Table 2 of the DepS paper.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from orchestrator.errors import UserError
from orchestrator.reports.table import Column
from orchestrator.storage.run_store import RunStore

COLUMNS = [
    Column("run", "run"),
    Column("method", "method"),
    Column("device_type", "device"),
    Column("epochs", "epochs"),
    Column("device_minutes_per_epoch", "dev-min/epoch", ".3f"),
    Column("train_device_hours", "train dev-h", ".4f"),
    Column("train_dollars", "train $", ".4f"),
    Column("eval_device_hours", "eval dev-h", ".4f"),
    Column("eval_dollars", "eval $", ".4f"),
    Column("total_dollars", "total $", ".4f"),
    Column("subnets", "subnets"),
    Column("smallest_top1", "smallest top-1", ".2f"),
    Column("smallest_mmacs", "smallest MMACs", ".2f"),
    Column("largest_top1", "largest top-1", ".2f"),
    Column("largest_mmacs", "largest MMACs", ".2f"),
]


def resolve_run_dir(name_or_path: str, root: Path) -> Path:
    path = Path(name_or_path)
    for candidate in (path, root / name_or_path):
        if (candidate / "epochs.parquet").exists() or (candidate / "subnets.parquet").exists():
            return candidate
    raise UserError(f"{name_or_path}: no run there (looked for epochs.parquet in {path} and {root / name_or_path})")


def _sum(table, column: str) -> float:
    return float(pc.sum(table[column]).as_py() or 0.0) if len(table) else 0.0


def run_costs(run_dir: Path) -> dict:
    store = RunStore(run_dir)
    epochs, subnets = store.epochs(), store.subnets()
    row: dict = {"run": run_dir.name, "method": None, "device_type": None}
    for table in (epochs, subnets):
        if len(table):
            row["method"] = table["method"][0].as_py()
            row["run"] = table["run"][0].as_py()
    if len(epochs):
        row["device_type"] = epochs["device_type"][0].as_py()
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
    row["total_dollars"] = row["train_dollars"] + row["eval_dollars"]
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


def cost_report(runs: list[str], root: Path) -> list[dict]:
    return [run_costs(resolve_run_dir(r, root)) for r in runs]
