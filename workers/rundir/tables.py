"""A run's ledger and result tables: one Parquet file each in its run directory, upserted by key."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from workers.rundir.layout import RunDir, as_run_dir
from workers.rundir.parquet_table import read_rows, upsert_rows
from workers.rundir.schemas import (
    CLASS_CORRELATION_KEY,
    CLASS_CORRELATION_SCHEMA,
    EPOCH_KEY,
    EPOCH_SCHEMA,
    GRADIENT_KEY,
    GRADIENT_SCHEMA,
    HOLD_KEY,
    HOLD_SCHEMA,
    LOST_KEY,
    LOST_SCHEMA,
    SUBNET_KEY,
    SUBNET_SCHEMA,
)


def as_dict(scalars: list[tuple[str, float]] | dict[str, float] | None) -> dict[str, float]:
    """A map column's value (Arrow gives a list of pairs) as a dict."""
    if scalars is None:
        return {}
    return dict(scalars)


class RunStore:
    """The tables of one run: epochs (the ledger), subnets, lost work, held devices and the two diagnostics."""

    def __init__(self, run_dir: Path | RunDir) -> None:
        self.files = as_run_dir(run_dir)

    @property
    def run_dir(self) -> Path:
        return self.files.path

    def record_epoch(self, row: dict) -> None:
        upsert_rows(self.files.epochs, [row], EPOCH_SCHEMA, EPOCH_KEY)

    def record_subnets(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.files.subnets, rows, SUBNET_SCHEMA, SUBNET_KEY)

    def record_lost(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.files.lost, rows, LOST_SCHEMA, LOST_KEY)

    def record_holds(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.files.holds, rows, HOLD_SCHEMA, HOLD_KEY)

    def record_class_correlation(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.files.class_correlation, rows, CLASS_CORRELATION_SCHEMA, CLASS_CORRELATION_KEY)

    def record_gradients(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.files.gradients, rows, GRADIENT_SCHEMA, GRADIENT_KEY)

    def epochs(self) -> pa.Table:
        return read_rows(self.files.epochs, EPOCH_SCHEMA)

    def epoch_rows(self) -> list[dict]:
        """The ledger's rows by epoch, each method scalar map as a dict."""
        rows = sorted(self.epochs().to_pylist(), key=lambda r: r["epoch"])
        for row in rows:
            row["scalars"] = as_dict(row["scalars"])
        return rows

    def subnets(self) -> pa.Table:
        return read_rows(self.files.subnets, SUBNET_SCHEMA)

    def lost(self) -> pa.Table:
        return read_rows(self.files.lost, LOST_SCHEMA)

    def holds(self) -> pa.Table:
        return read_rows(self.files.holds, HOLD_SCHEMA)

    def class_correlation(self) -> pa.Table:
        return read_rows(self.files.class_correlation, CLASS_CORRELATION_SCHEMA)

    def gradients(self) -> pa.Table:
        return read_rows(self.files.gradients, GRADIENT_SCHEMA)

    def spent_anything(self) -> bool:
        """Whether the run has trained an epoch, evaluated a subnet, or lost work."""
        return any(path.exists() for path in (self.files.epochs, self.files.subnets, self.files.lost))
