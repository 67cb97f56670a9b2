"""The price catalog, the Slurm cluster's internal price, and the ledger of lost work (no cluster needed)."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from orchestrator.backends import describe_plan
from orchestrator.cost.catalog import TIERS, catalog_entry, load_catalog, lookup_price
from orchestrator.errors import UserError
from orchestrator.plan import make_plan
from orchestrator.reports.cost_report import resolve_run_dirs, run_costs
from orchestrator.spec_file import load_spec
from workers.rundir.attempts import AttemptLog, read_markers, record_lost_attempts
from workers.rundir.tables import RunStore

ISSUE_DEVICES = ["A40", "A100-40GB", "A100-80GB", "H100", "H200", "L4", "T4", "V100", "cpu"]


def test_every_device_has_on_demand_and_spot_prices_each_with_source_and_date():
    devices = load_catalog()
    assert set(ISSUE_DEVICES) <= set(devices)
    for device in ISSUE_DEVICES:
        for tier in TIERS:
            price = catalog_entry(devices, device, tier)
            assert price is not None, (device, tier)
            assert 0 < price.per_device_hour < 20, (device, tier)
            assert len(price.source) > 10 and len(price.as_of) == 7, (device, tier)  # a named source, "YYYY-MM"
        assert (
            catalog_entry(devices, device, "spot").per_device_hour
            < catalog_entry(devices, device, "on_demand").per_device_hour
        )


def test_the_deps_paper_a40_rate_reproduces_its_table():
    a40 = lookup_price("A40", "on_demand")
    assert math.isclose(a40.per_device_hour * 700, 1491, rel_tol=1e-3)
    assert "DepS" in a40.source and a40.as_of == "2024-03"


def test_a_users_catalog_may_use_flat_rows_or_tiers_with_their_own_source(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "devices": {
                    "A40": {"on_demand": 1.0, "spot": 0.5, "source": "our rate card", "as_of": "2025-01"},
                    "H100": {"on_demand": {"price": 2.5, "source": "contract 42", "as_of": "2025-02"}},
                    "L4": {"on_demand": "cheap"},
                }
            }
        )
    )
    assert lookup_price("A40", "spot", catalog_path=path).source == "our rate card"
    h100 = lookup_price("H100", "on_demand", catalog_path=path)
    assert (h100.per_device_hour, h100.source, h100.as_of) == (2.5, "contract 42", "2025-02")
    with pytest.raises(UserError, match="cost.pricing: the catalog has no spot price for 'H100'"):
        lookup_price("H100", "spot", catalog_path=path)
    with pytest.raises(UserError, match="L4.on_demand is not a price: 'cheap'"):
        lookup_price("L4", "on_demand", catalog_path=path)
    with pytest.raises(UserError, match="cost.catalog: cannot read"):
        lookup_price("A40", "on_demand", catalog_path=tmp_path / "missing.yaml")


def _slurm_spec(tmp_path: Path, slurm: dict, cost: dict | None = None) -> Path:
    path = tmp_path / "spec.yaml"
    spec = {
        "run": "priced",
        "method": {"name": "deps", "epochs": 4},
        "dataset": {"name": "digits", "resolution": 16, "batch_size": 8},
        "cluster": {
            "backend": "slurm",
            "num_workers": 8,
            "cpus_per_worker": 4,
            "gpus_per_worker": 1,
            "accelerator": "A100-80GB",
            "slurm": {"nodes": 2, "gpus_per_node": 4, **slurm},
        },
        "cost": cost or {},
        "storage": {"root": str(tmp_path / "runs")},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_slurm_cluster_prices_its_gpus_at_its_internal_rate(tmp_path):
    catalog = make_plan(load_spec(_slurm_spec(tmp_path, {})))
    assert catalog.training.devices == 8 and catalog.training.price.tier == "on_demand"
    assert catalog.training.price.per_device_hour == lookup_price("A100-80GB", "on_demand").per_device_hour

    internal = make_plan(load_spec(_slurm_spec(tmp_path, {"price_per_device_hour": 0.9, "price_source": "HPC centre"})))
    price = internal.training.price
    assert (price.tier, price.per_device_hour, price.source) == ("internal", 0.9, "HPC centre")
    assert describe_plan(internal)["cluster"]["slurm"]["dollars_per_hour"] == pytest.approx(8 * 0.9)
    assert describe_plan(internal)["cluster"]["slurm"]["cpus_per_node"] == 16  # 4 workers x 4 CPUs on a node

    # The spec's own price beats the cluster's.
    spec = load_spec(_slurm_spec(tmp_path, {"price_per_device_hour": 0.9}, {"price_per_device_hour": 3.0}))
    assert make_plan(spec).training.price.per_device_hour == 3.0


def _marker_log(run_dir: Path, attempt: int, started: float, resume_epoch: int | None = None) -> AttemptLog:
    return AttemptLog.begin(
        run_dir,
        attempt,
        started,
        resume_epoch=resume_epoch,
        run="r",
        method="deps",
        group=None,
        devices=4,
        device_type="A40",
        price_per_device_hour=2.0,
    )


def test_an_attempt_that_dies_mid_epoch_is_charged_once_from_its_last_epoch_to_its_last_heartbeat(tmp_path):
    now = time.time()
    first = _marker_log(tmp_path, 0, now - 100)  # set-up from now-100 until its first step
    first.heartbeat(0)
    first.epoch_done(0)
    first.marker.last_epoch_end = now - 60  # the epoch ended 60 s ago ...
    first.marker.heartbeat_at, first.marker.epoch = now - 20, 1  # ... and it died 40 s into epoch 1
    first._write()

    second = _marker_log(tmp_path, 1, now)  # the next attempt charges the first one's 40 s
    (row,) = RunStore(tmp_path).lost().to_pylist()
    assert row["attempt"] == 0 and row["epoch"] == 1 and row["detected_by_attempt"] == 1
    assert row["lost_seconds"] == pytest.approx(40.0, abs=0.01)
    assert row["device_hours"] == pytest.approx(40 * 4 / 3600) and row["dollars"] == pytest.approx(40 * 4 / 3600 * 2)
    assert row["lost_from"].timestamp() == pytest.approx(now - 60, abs=1e-3)
    assert row["last_heartbeat"].tzinfo is not None and row["last_heartbeat"] < datetime.now(timezone.utc)

    # An attempt that dies before finishing any epoch loses its set-up too.
    second.marker.heartbeat_at = second.marker.started_at + 15
    second._write()
    third = _marker_log(tmp_path, 2, now + 30)
    third.finish()
    rows = sorted(RunStore(tmp_path).lost().to_pylist(), key=lambda r: r["attempt"])
    assert [r["attempt"] for r in rows] == [0, 1] and rows[1]["lost_seconds"] == pytest.approx(15.0)
    assert rows[0]["detected_by_attempt"] == 1  # not re-charged by attempt 2

    # Reading the markers again adds nothing; a finished attempt is never charged.
    assert record_lost_attempts(tmp_path, 3) == []
    assert len(RunStore(tmp_path).lost()) == 2
    assert [m.finished for m in read_markers(tmp_path)] == [False, False, True]
    assert json.loads((tmp_path / "attempts" / "2.json").read_text())["finished"] is True


def test_an_epoch_finished_by_an_attempt_that_died_before_its_checkpoint_was_kept_is_lost_work(tmp_path):
    # Attempt 0 finished epochs 0-2 and died 5 s into epoch 3, but Ray Train had not registered epoch 2's checkpoint:
    # attempt 1 resumes at epoch 2, so epoch 2 (from epoch 1's end) and the start of epoch 3 were paid for and lost.
    now = time.time()
    first = _marker_log(tmp_path, 0, now - 100)
    for epoch in range(3):
        first.heartbeat(epoch)
        first.epoch_done(epoch)
    first.marker.epoch_ends = {"0": now - 80, "1": now - 60, "2": now - 40}
    first.marker.last_epoch_end = now - 40
    first.marker.heartbeat_at, first.marker.epoch = now - 35, 3
    first._write()
    _marker_log(tmp_path, 1, now, resume_epoch=2)
    (row,) = RunStore(tmp_path).lost().to_pylist()
    assert row["attempt"] == 0 and row["epoch"] == 2 and row["detected_by_attempt"] == 1
    assert row["lost_seconds"] == pytest.approx(25.0, abs=0.01)  # from epoch 1's end to the last heartbeat
    assert row["lost_from"].timestamp() == pytest.approx(now - 60, abs=1e-3)
    # Had its checkpoint been kept (resumed at epoch 3), only the 5 s into epoch 3 would have been lost.
    assert read_markers(tmp_path)[0].lost_row(1, resume_epoch=3)["lost_seconds"] == pytest.approx(5.0, abs=0.01)
    assert read_markers(tmp_path)[0].lost_row(1, resume_epoch=3)["epoch"] == 3


def test_cost_report_shows_lost_hours_apart_and_in_the_total(tmp_path):
    _marker_log(tmp_path, 0, time.time() - 30)
    _marker_log(tmp_path, 1, time.time())
    row = run_costs(tmp_path)
    lost = RunStore(tmp_path).lost().to_pylist()[0]
    assert row["lost_device_hours"] == pytest.approx(lost["device_hours"]) and row["lost_device_hours"] > 0
    assert row["total_dollars"] == pytest.approx(row["train_dollars"] + row["eval_dollars"] + lost["dollars"])
    # A run whose only spending is lost work (stopped before its first epoch) is still a run, named as such.
    assert (row["run"], row["method"], row["device_type"], row["epochs"]) == ("r", "deps", "A40", 0)
    assert resolve_run_dirs(str(tmp_path), tmp_path) == [tmp_path]


def test_an_attempt_stopped_mid_epoch_on_purpose_charges_the_epoch_at_once_and_only_once(tmp_path):
    now = time.time()
    log = _marker_log(tmp_path, 0, now - 30)
    log.heartbeat(0)
    log.epoch_done(0)
    log.marker.last_epoch_end = now - 12  # epoch 0 ended 12 s ago; the budget stops epoch 1 now
    log.abandon_epoch(1)
    (row,) = RunStore(tmp_path).lost().to_pylist()
    assert row["attempt"] == 0 and row["epoch"] == 1 and row["detected_by_attempt"] == 0
    assert row["lost_seconds"] == pytest.approx(12.0, abs=0.5)
    assert read_markers(tmp_path)[0].finished
    _marker_log(tmp_path, 1, now)  # the resumed attempt finds nothing more to charge
    assert len(RunStore(tmp_path).lost()) == 1
