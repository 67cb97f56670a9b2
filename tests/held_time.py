"""The check that a finished run's held time is its bill: shared by the end-to-end tests of each backend."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest


def assert_held_time_adds_up(run_dir: Path, row: dict, kind: str) -> None:
    """cost-report's useful + overhead + lost is the held time, and everything the ledger priced lies inside it."""
    holds = pq.read_table(run_dir / "holds.parquet").to_pandas()
    assert len(holds) >= 1 and (holds.kind == kind).all() and not holds.open.any()
    held = holds.device_hours.sum()
    assert row["held_device_hours"] == pytest.approx(held)
    parts = row["useful_device_hours"] + row["overhead_device_hours"] + row["lost_device_hours"]
    assert parts == pytest.approx(held, rel=0.01)
    assert row["total_dollars"] == pytest.approx(holds.dollars.sum())
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pandas()
    subnets = pq.read_table(run_dir / "subnets.parquet").to_pandas()
    useful = (epochs.wall_seconds * epochs.devices).sum() / 3600
    assert row["useful_device_hours"] == pytest.approx(useful) and useful > 0
    # Overhead covers what the ledger charged besides the epochs' own time: set-up, stage changes and the
    # forecast (each epoch's overhead_seconds) and the evaluation.
    charged = (epochs.overhead_seconds * epochs.devices).sum() / 3600 + subnets.device_hours.sum()
    assert row["overhead_device_hours"] >= charged * 0.99
    # And the priced work happened while the devices were held.
    first = (epochs.finished_at - pd_seconds(epochs.wall_seconds + epochs.overhead_seconds)).min()
    assert first >= holds.started_at.min() - pd_seconds(1.0)
    assert max(epochs.finished_at.max(), subnets.evaluated_at.max()) <= holds.ended_at.max() + pd_seconds(1.0)


def pd_seconds(seconds):
    import pandas as pd

    return pd.to_timedelta(seconds, unit="s")
