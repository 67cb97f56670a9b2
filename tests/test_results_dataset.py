"""One results dataset across runs: read in one go with pyarrow.dataset, pandas and DuckDB.

`write_run` writes a run's results the way the product does (RunStore upserts, a
plan.json); tests/test_compare.py and tests/test_plots.py use it too.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.storage.dataset import (
    TABLES,
    group_of,
    groups,
    read_run_table,
    register_duckdb,
    results_dataset,
    run_dirs,
    runs_in_group,
)
from workers.rundir.schemas import EPOCH_SCHEMA, SUBNET_SCHEMA
from workers.rundir.tables import RunStore

PRICE = 0.05  # dollars per device-hour


def epoch_row(run: str, method: str, epoch: int, phase: str, seconds: float, group: str | None = None) -> dict:
    hours = seconds * 2 / 3600
    return {
        "run": run,
        "group": group,
        "method": method,
        "epoch": epoch,
        "phase": phase,
        "attempt": 0,
        "wall_seconds": seconds,
        "overhead_seconds": 0.0,
        "devices": 2,
        "device_type": "cpu",
        "device_hours": hours,
        "price_per_device_hour": PRICE,
        "dollars": hours * PRICE,
        "images": 512,
        "images_per_second": 512 / seconds,
        "subnets_per_step": 1.0 if phase == "warmup" else 4.0,
        "loss": 1.0,
        "subnet_loss": None,
        "lr": 0.1,
        "scalars": None,
        "finished_at": datetime.now(timezone.utc),
    }


def subnet_row(run: str, method: str, subnet_id: str, macs: int, top1: float, group: str | None = None) -> dict:
    hours = 1.0 * 1 / 3600
    return {
        "run": run,
        "group": group,
        "method": method,
        "subnet_id": subnet_id,
        "config": "{}",
        "resolution": 16,
        "macs": macs,
        "params": 1000,
        "top1": top1,
        "top5": None,
        "calibration_images": 128,
        "test_images": 360,
        "checkpoint_epoch": 3,
        "eval_seconds": 1.0,
        "devices": 1,
        "device_type": "cpu",
        "device_hours": hours,
        "dollars": hours * PRICE,
        "evaluated_at": datetime.now(timezone.utc),
        "selection": "buckets",
        "search_round": None,
    }


def write_run(
    root: Path,
    run: str,
    method: str,
    subnets: list[tuple[int, float]],
    phases: list[tuple[str, float]],
    group: str | None = None,
    mac_range: tuple[int, int] = (100, 700),
    classes: int = 10,
) -> Path:
    """A finished run: one epoch row per (phase, seconds), one subnet row per (MACs, top-1), and its plan."""
    store = RunStore(root / run)
    for epoch, (phase, seconds) in enumerate(phases):
        store.record_epoch(epoch_row(run, method, epoch, phase, seconds, group))
    store.record_subnets([subnet_row(run, method, f"{run}-{i}", m, t, group) for i, (m, t) in enumerate(subnets)])
    plan = {
        "run": run,
        "group": group,
        "method": {"name": method},
        "dataset": {"classes": classes},
        "space": {"smallest_macs": mac_range[0], "largest_macs": mac_range[1]},
    }
    (root / run / "plan.json").write_text(json.dumps(plan))
    return root / run


@pytest.fixture
def root(tmp_path):
    write_run(tmp_path, "cmp-deps", "deps", [(100, 50.0), (400, 70.0)], [("warmup", 10), ("shrinking", 40)], "cmp")
    write_run(tmp_path, "cmp-ofa", "ofa", [(100, 45.0), (700, 75.0)], [("teacher", 10)] * 3, "cmp")
    write_run(tmp_path, "solo", "deps", [(300, 60.0)], [("warmup", 5)])
    (tmp_path / "_compare" / "cmp").mkdir(parents=True)  # plots, not a run
    (tmp_path / "stray").mkdir()  # a directory without results
    return tmp_path


def test_every_runs_tables_read_as_one_pyarrow_dataset(root):
    assert [d.name for d in run_dirs(root)] == ["cmp-deps", "cmp-ofa", "solo"]
    subnets = results_dataset(root, "subnets")
    assert subnets.schema == SUBNET_SCHEMA
    table = subnets.to_table(columns=["run", "top1"], filter=ds.field("group") == "cmp")
    assert sorted(table.column("run").to_pylist()) == ["cmp-deps", "cmp-deps", "cmp-ofa", "cmp-ofa"]
    assert results_dataset(root, "epochs").count_rows() == 2 + 3 + 1
    # Naming runs opens only their files.
    only = results_dataset([root / "solo"], "epochs")
    assert only.files == [str(root / "solo" / "epochs.parquet")] and only.count_rows() == 1


def test_pandas_and_duckdb_read_the_same_rows(root):
    frame = results_dataset(root, "epochs").to_table().to_pandas()
    assert frame.groupby("run").dollars.sum().round(9).to_dict() == {
        "cmp-deps": round(50 * 2 / 3600 * PRICE, 9),
        "cmp-ofa": round(30 * 2 / 3600 * PRICE, 9),
        "solo": round(5 * 2 / 3600 * PRICE, 9),
    }
    con = duckdb.connect()
    assert set(register_duckdb(con, root)) == {"epochs", "subnets"}
    rows = con.execute('SELECT run, max(top1) FROM subnets WHERE "group" = ? GROUP BY run ORDER BY run', ["cmp"])
    assert rows.fetchall() == [("cmp-deps", 70.0), ("cmp-ofa", 75.0)]
    glob = str(root / "*" / "epochs.parquet")
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', union_by_name = true)").fetchall()[0][0]
    assert count == 6


def test_groups_come_from_the_plan_or_else_the_parquet_footers(root):
    assert groups(root) == ["cmp"] and [d.name for d in runs_in_group(root, "cmp")] == ["cmp-deps", "cmp-ofa"]
    (root / "cmp-ofa" / "plan.json").unlink()
    assert group_of(root / "cmp-ofa") == "cmp"  # from the group column's statistics
    assert group_of(root / "solo") is None


def test_an_older_file_without_the_newer_columns_reads_them_as_null(root):
    old = root / "old"
    old.mkdir()
    legacy = pa.schema([f for f in EPOCH_SCHEMA if f.name != "group"])
    pq.write_table(
        pa.Table.from_pylist([epoch_row("old", "deps", 0, "warmup", 3.0)], schema=legacy), old / "epochs.parquet"
    )
    table = results_dataset(root, "epochs").to_table(filter=ds.field("run") == "old")
    assert table.num_rows == 1 and table.column("group").to_pylist() == [None]
    assert read_run_table(old, "epochs", ["run", "group"]).to_pylist() == [{"run": "old", "group": None}]
    assert read_run_table(old, "gradients").num_rows == 0  # a run without diagnostics


def test_unknown_tables_are_named():
    with pytest.raises(ValueError, match="unknown results table 'subnet'; tables: " + ", ".join(TABLES)):
        results_dataset(Path("."), "subnet")


def test_status_cost_report_and_compare_pick_the_same_members_of_a_group(root, capsys):
    from orchestrator.cli import main

    write_run(root, "cmp-bignas", "bignas", [(200, 55.0)], [("sandwich", 20)], "cmp")
    (root / "cmp-ofa" / "plan.json").unlink()  # its group is read from its Parquet footers now

    def names(argv: list[str]) -> list[str]:
        assert main(argv) == 0
        document = json.loads(capsys.readouterr().out)
        rows = document["runs"] if isinstance(document, dict) else document
        return [row["run"] for row in rows]

    members = {"cmp-deps", "cmp-ofa", "cmp-bignas"}
    status = names(["status", "cmp", "--root", str(root), "--format", "json"])
    report = names(["cost-report", "cmp", "--root", str(root), "--format", "json"])
    compared = names(["compare", "--group", "cmp", "--root", str(root), "--format", "json", "--no-plots"])
    assert set(status) == set(report) == set(compared) == members
    assert report == compared  # in the order they were submitted
