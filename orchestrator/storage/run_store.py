"""Where a run's files live under the storage root, and the run's two tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from orchestrator.storage.parquet_table import read_rows, upsert_rows
from orchestrator.storage.schemas import (
    CLASS_CORRELATION_KEY,
    CLASS_CORRELATION_SCHEMA,
    EPOCH_KEY,
    EPOCH_SCHEMA,
    GRADIENT_KEY,
    GRADIENT_SCHEMA,
    LOST_KEY,
    LOST_SCHEMA,
    SUBNET_KEY,
    SUBNET_SCHEMA,
)

EPOCHS_FILE = "epochs.parquet"
SUBNETS_FILE = "subnets.parquet"
CLASS_CORRELATION_FILE = "class_correlation.parquet"
GRADIENTS_FILE = "gradients.parquet"
LOST_FILE = "lost.parquet"


@dataclass(frozen=True)
class RunStore:
    run_dir: Path

    @property
    def epochs_path(self) -> Path:
        return self.run_dir / EPOCHS_FILE

    @property
    def subnets_path(self) -> Path:
        return self.run_dir / SUBNETS_FILE

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def plan_path(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage_path: checkpoints live under <run_dir>/ray/<run>."""
        return self.run_dir / "ray"

    def record_epoch(self, row: dict) -> None:
        upsert_rows(self.epochs_path, [row], EPOCH_SCHEMA, EPOCH_KEY)

    def record_subnets(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.subnets_path, rows, SUBNET_SCHEMA, SUBNET_KEY)

    def epochs(self) -> pa.Table:
        return read_rows(self.epochs_path, EPOCH_SCHEMA)

    def subnets(self) -> pa.Table:
        return read_rows(self.subnets_path, SUBNET_SCHEMA)

    def record_class_correlation(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.run_dir / CLASS_CORRELATION_FILE, rows, CLASS_CORRELATION_SCHEMA, CLASS_CORRELATION_KEY)

    def record_gradients(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.run_dir / GRADIENTS_FILE, rows, GRADIENT_SCHEMA, GRADIENT_KEY)

    def record_lost(self, rows: list[dict]) -> None:
        if rows:
            upsert_rows(self.run_dir / LOST_FILE, rows, LOST_SCHEMA, LOST_KEY)

    def lost(self) -> pa.Table:
        return read_rows(self.run_dir / LOST_FILE, LOST_SCHEMA)

    def class_correlation(self) -> pa.Table:
        return read_rows(self.run_dir / CLASS_CORRELATION_FILE, CLASS_CORRELATION_SCHEMA)

    def gradients(self) -> pa.Table:
        return read_rows(self.run_dir / GRADIENTS_FILE, GRADIENT_SCHEMA)


def run_dir_for(storage_root: Path, run: str) -> Path:
    """The run's directory; the run name is validated, and this refuses anything outside the root."""
    root = storage_root.expanduser().resolve()
    run_dir = (root / run).resolve()
    if run_dir.parent != root:
        raise ValueError(f"run name {run!r} escapes the storage root {root}")
    return run_dir
