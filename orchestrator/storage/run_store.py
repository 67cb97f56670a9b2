"""Where a run's files live under the storage root, and the run's two tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from orchestrator.storage.parquet_table import read_rows, upsert_rows
from orchestrator.storage.schemas import EPOCH_KEY, EPOCH_SCHEMA, SUBNET_KEY, SUBNET_SCHEMA

EPOCHS_FILE = "epochs.parquet"
SUBNETS_FILE = "subnets.parquet"


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


def run_dir_for(storage_root: Path, run: str) -> Path:
    """The run's directory; the run name is validated, and this refuses anything outside the root."""
    root = storage_root.expanduser().resolve()
    run_dir = (root / run).resolve()
    if run_dir.parent != root:
        raise ValueError(f"run name {run!r} escapes the storage root {root}")
    return run_dir
