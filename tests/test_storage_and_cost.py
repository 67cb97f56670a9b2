import math
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cost.catalog import lookup_price
from orchestrator.errors import UserError
from workers.rundir.layout import run_dir_for
from workers.rundir.parquet_table import upsert_rows
from workers.rundir.pricing import Usage
from workers.rundir.tables import RunStore

SCHEMA = pa.schema([pa.field("run", pa.string()), pa.field("k", pa.int32()), pa.field("v", pa.float64())])


def test_upsert_replaces_rows_with_the_same_key_and_never_duplicates(tmp_path):
    path = tmp_path / "t.parquet"
    upsert_rows(path, [{"run": "a", "k": 1, "v": 1.0}, {"run": "a", "k": 2, "v": 2.0}], SCHEMA, ("run", "k"))
    upsert_rows(path, [{"run": "a", "k": 2, "v": 20.0}, {"run": "a", "k": 3, "v": 3.0}], SCHEMA, ("run", "k"))
    upsert_rows(path, [{"run": "a", "k": 2, "v": 20.0}], SCHEMA, ("run", "k"))
    table = pq.read_table(path).to_pylist()
    assert table == [{"run": "a", "k": 1, "v": 1.0}, {"run": "a", "k": 2, "v": 20.0}, {"run": "a", "k": 3, "v": 3.0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.lock"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "t.parquet"
    upsert_rows(path, [{"run": "a", "k": 1, "v": 1.0}], SCHEMA, ("run", "k"))
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        upsert_rows(path, [{"run": "a", "k": "not a number", "v": 1.0}], SCHEMA, ("run", "k"))
    assert pq.read_table(path).to_pylist() == [{"run": "a", "k": 1, "v": 1.0}]


def test_price_formula():
    usage = Usage.of(1800, devices=16, price_per_device_hour=2.13)
    assert usage.device_hours == pytest.approx(8.0)
    assert usage.dollars == pytest.approx(8.0 * 2.13)


def test_catalog_has_the_deps_paper_a40_price_and_rejects_unknown_devices():
    a40 = lookup_price("A40", "on_demand")
    assert math.isclose(a40.per_device_hour, 1491 / 700, rel_tol=0.01)
    assert "DepS" in a40.source and a40.as_of
    assert lookup_price("cpu", "on_demand").per_device_hour > 0
    assert lookup_price("A40", "on_demand", override=1.5).per_device_hour == 1.5
    with pytest.raises(UserError, match="cluster.accelerator: no price for 'B300'.*A40"):
        lookup_price("B300", "on_demand")


def test_run_dirs_cannot_escape_the_storage_root(tmp_path):
    assert run_dir_for(tmp_path, "ok-run") == (tmp_path / "ok-run").resolve()
    for bad in ("../x", "a/../../b", "/etc", ".."):
        with pytest.raises(ValueError):
            run_dir_for(tmp_path, bad)


def test_epoch_rows_are_readable_by_pandas(tmp_path):
    store = RunStore(tmp_path)
    row = {
        "run": "r",
        "method": "deps",
        "epoch": 0,
        "phase": "warmup",
        "attempt": 0,
        "wall_seconds": 10.0,
        "overhead_seconds": 2.0,
        "devices": 2,
        "device_type": "cpu",
        "device_hours": 12 * 2 / 3600,
        "price_per_device_hour": 0.04,
        "dollars": 12 * 2 / 3600 * 0.04,
        "images": 100,
        "images_per_second": 10.0,
        "subnets_per_step": 1.0,
        "loss": 1.0,
        "subnet_loss": None,
        "lr": 0.1,
        "scalars": {"epsilon": 0.0},
        "finished_at": datetime.now(timezone.utc),
    }
    store.record_epoch(row)
    store.record_epoch({**row, "loss": 0.5})
    frame = pd.read_parquet(store.files.epochs)
    assert len(frame) == 1 and frame.loss.iloc[0] == 0.5
