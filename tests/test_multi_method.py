"""Every method end to end through `deps-orch submit` on a real local Ray cluster, as comparisons of several runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import deps_orch
from tests.held_time import assert_held_time_adds_up

pytestmark = pytest.mark.ray

TINY = {
    "seed": 0,
    "dataset": {"name": "digits", "resolution": 16, "batch_size": 32, "train_subset": 256},
    "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
    "optimizer": {"lr": 0.1, "lr_batch": 64},
    "cluster": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 1, "backend": "ray", "address": "auto"},
    "evaluation": {
        "subnets": 0,
        "calibration_images": 64,
        "calibration_batch_size": 64,
        "workers": 1,
        "diagnostics": {"enabled": False},  # taken, and tested, in tests/test_dashboard_metrics.py
    },
    "forecast": {"measure": False},
}


def _write(tmp_path: Path, run: str, methods: list, **overrides) -> Path:
    spec = {"run": run, **TINY, "methods": methods, "storage": {"root": str(tmp_path / "runs")}}
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value}
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _ledger(run_dir: Path) -> pd.DataFrame:
    return pq.read_table(run_dir / "epochs.parquet").to_pandas().sort_values("epoch").reset_index(drop=True)


def _attempts(run_dir: Path) -> int:
    return json.loads((run_dir / "attempts.json").read_text())["attempts"]


def test_every_method_runs_in_one_comparison_and_resumes_at_the_right_stage(tmp_path, shared_cluster):
    one = {"epochs": 1, "warmup_epochs": 0}
    methods = [
        {"name": "deps", "epochs": 2, "warmup_fraction": 0.5, "eps_ramp_epochs": 1, "subnets_per_step": 3},
        {
            "name": "ofa",
            "teacher_epochs": 1,
            "kernel": one,
            "depth1": one,
            "depth2": one,
            "expand1": one,
            "expand2": one,
        },
        {"name": "bignas", "epochs": 2, "subnets_per_step": 3},
        {
            "name": "compofa",
            "teacher_epochs": 1,
            "phase1": one,
            "phase2": one,
            "teacher_divergence": "alpha_divergence",
        },
        # RSS: one subnet per epoch, largest then smallest (every scheme's order is tests/test_methods.py's).
        {"name": "rss", "epochs": 2, "selection": "max_then_min"},
    ]
    spec = _write(tmp_path, "cmp", methods)
    result = deps_orch("submit", str(spec), timeout=900, env=shared_cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "5 of 5 runs succeeded" in result.stdout
    root = tmp_path / "runs"

    expected = {
        "deps": (["warmup", "shrinking"], [1.0, 3.0]),
        "ofa": (["teacher", "kernel", "depth1", "depth2", "expand1", "expand2"], [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]),
        "bignas": (["sandwich", "sandwich"], [3.0, 3.0]),
        "compofa": (["teacher", "phase1", "phase2"], [1.0, 4.0, 4.0]),
        "rss-max-then-min": (["max", "min"], [1.0, 1.0]),
    }
    for label, (phases, per_step) in expected.items():
        run_dir, method = root / f"cmp-{label}", label.split("-")[0]
        ledger = _ledger(run_dir)
        assert list(ledger.epoch) == list(range(len(phases)))  # one global epoch index across stages
        assert list(ledger.phase) == phases and list(ledger.subnets_per_step) == per_step
        assert (ledger.group == "cmp").all() and (ledger.method == method).all()
        assert ledger.loss.notna().all() and (ledger.dollars > 0).all()
        subnets = pq.read_table(run_dir / "subnets.parquet").to_pandas()
        assert len(subnets) == 2 and (subnets.group == "cmp").all()
        assert json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"
        stages = json.loads((run_dir / "stages.json").read_text())
        assert len(stages) == (len(phases) if method in ("ofa", "compofa") else 1)
        # One worker group trains every stage: the stages follow one another in one Ray Train job, and every
        # second between two epochs (a stage change) is the next epoch's overhead.
        assert _attempts(run_dir) == 1 and (ledger.overhead_seconds > 0).all()
        assert ledger.overhead_seconds[0] == ledger.overhead_seconds.max()  # the set-up
    # CompOFA evaluates subnets of its coupled space (kernel 7); the others' smallest has kernel 3.
    compofa = pq.read_table(root / "cmp-compofa" / "subnets.parquet").to_pandas()
    assert all(set(k for s in json.loads(c)["stages"] for k in s["kernels"]) == {7} for c in compofa.config)
    deps_ledger = _ledger(root / "cmp-deps")
    epsilon = [dict(s)["epsilon"] for s in deps_ledger.scalars]
    assert epsilon[0] == 0.0 and epsilon[1] > 0

    report = deps_orch("cost-report", "cmp", "--root", str(root), "--format", "json")
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)
    assert [r["method"] for r in rows] == ["deps", "ofa", "bignas", "compofa", "rss"]
    assert all(r["group"] == "cmp" for r in rows)
    for row in rows:
        ledger = _ledger(root / row["run"])
        assert row["epochs"] == len(ledger) and row["train_dollars"] == pytest.approx(ledger.dollars.sum())
        assert_held_time_adds_up(root / row["run"], row, "ray cluster")
    # One after another on one cluster: each run's hold starts where the one before it ended.
    holds = [pq.read_table(root / r["run"] / "holds.parquet").to_pandas().iloc[0] for r in rows]
    for before, after in zip(holds, holds[1:]):
        assert abs((after.started_at - before.ended_at).total_seconds()) < 1.0
    table = deps_orch("cost-report", "cmp", "--root", str(root))
    assert all(f"cmp-{m}" in table.stdout for m in expected) and "dev-min/epoch" in table.stdout

    # Re-submitting: finished stages are not run again. With OFA's last stage not yet recorded as
    # finished, only that stage's job starts again (resuming from its last checkpoint, no epoch redone).
    ofa_dir = root / "cmp-ofa"
    before = {m: _ledger(root / f"cmp-{m}") for m in expected}
    attempts = {m: _attempts(root / f"cmp-{m}") for m in expected}
    stages = json.loads((ofa_dir / "stages.json").read_text())
    del stages["expand2"]
    (ofa_dir / "stages.json").write_text(json.dumps(stages))
    again = deps_orch("submit", str(spec), timeout=600, env=shared_cluster.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stage 6/6 expand2" in again.stdout and "stage 1/6" not in again.stdout
    for method in expected:
        pd.testing.assert_frame_equal(_ledger(root / f"cmp-{method}"), before[method])
        assert len(pq.read_table(root / f"cmp-{method}" / "subnets.parquet")) == 2
        assert _attempts(root / f"cmp-{method}") == attempts[method] + (1 if method == "ofa" else 0)
    # RSS trains the largest subnet alone, then the smallest: no subnet losses beside the first.
    assert _ledger(root / "cmp-rss-max-then-min").subnet_loss.isna().all()
    assert "expand2" in json.loads((ofa_dir / "stages.json").read_text())


def test_a_groups_dry_run_projects_its_table_and_times_shared_work_once(tmp_path):
    spec = {
        "run": "projected",
        **TINY,
        "cluster": {"num_workers": 2, "cpus_per_worker": 1},
        "forecast": {"steps": 2, "max_steps": 4, "warmup_steps": 1},
        "methods": [
            {"name": "deps", "epochs": 2, "warmup_fraction": 0.5, "eps_ramp_epochs": 1, "subnets_per_step": 3},
            {"name": "compofa", "teacher_epochs": 1, "phase1": {"epochs": 1}, "phase2": {"epochs": 1}},
        ],
        "storage": {"root": str(tmp_path / "runs")},
    }
    path = tmp_path / "projected.yaml"
    path.write_text(yaml.safe_dump(spec))
    dry = deps_orch("submit", str(path), "--dry-run", timeout=600)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    shown = yaml.safe_load(dry.stdout)  # the text table is YAML comments: the output still parses
    rows = {r["method"]: r for r in shown["projected"]}
    assert list(rows) == ["deps", "compofa"] and rows["deps"]["epochs"] == 2
    for row, run in zip(rows.values(), shown["runs"], strict=True):
        forecast = run["forecast"]
        assert row["epochs"] == sum(p["epochs"] for p in forecast["phases"])
        assert row["device_hours"] == forecast["total"]["device_hours"] > 0
        per_epoch = forecast["training"]["device_hours"] * 60 / row["epochs"]
        assert row["device_minutes_per_epoch"] == pytest.approx(per_epoch, rel=1e-3)
    # CompOFA's teacher phase is DepS's warmup (the full model alone): timed once, for DepS.
    deps_phases, compofa_phases = (run["forecast"]["phases"] for run in shown["runs"])
    assert [p["timed"] for p in deps_phases] == ["here", "here"]
    assert [p["timed"] for p in compofa_phases] == ["as projected-deps/warmup", "here", "here"]
    assert compofa_phases[0]["step_seconds"] == deps_phases[0]["step_seconds"]
    table = [line for line in dry.stdout.splitlines() if line.startswith("# ")]
    assert table[0] == "# projected: projected" and "dev-min/epoch" in table[1] and len(table) == 5
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_a_comparison_the_cluster_fits_twice_runs_both_methods_at_once_as_tune_trials(tmp_path):
    # One worker a run on the embedded 2-CPU cluster: both runs at once, each an ordinary run with its own hold.
    methods = [
        {"name": "deps", "epochs": 2, "warmup_fraction": 0.5, "eps_ramp_epochs": 1, "subnets_per_step": 2},
        {"name": "bignas", "epochs": 2, "subnets_per_step": 2},
    ]
    cluster = {"num_workers": 1, "backend": "local", "address": None}
    path = _write(tmp_path, "both", methods, cluster=cluster, storage={"root": "runs"})  # relative to the cwd
    root = tmp_path / "runs"
    done = deps_orch("submit", str(path), cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[both] comparison: 2 runs, 2 at a time, on Ray Tune" in done.stdout
    assert "[both] 2 runs in" in done.stdout and "2 finished, 0 stopped early" in done.stdout
    runs = ["both-deps", "both-bignas"]
    spans = []
    for run in runs:
        ledger = _ledger(root / run)
        assert list(ledger.epoch) == [0, 1] and set(ledger.group) == {"both"}
        assert json.loads((root / run / "state.json").read_text())["state"] == "SUCCEEDED"
        assert len(pq.read_table(root / run / "subnets.parquet")) == 2
        start = (ledger.finished_at - pd.to_timedelta(ledger.wall_seconds, unit="s")).min()
        spans.append((start, ledger.finished_at.max()))
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end  # their training overlapped
    report = deps_orch("cost-report", "both", "--root", str(root), "--format", "json")
    rows = {r["run"]: r for r in json.loads(report.stdout)}
    for run in runs:
        assert_held_time_adds_up(root / run, rows[run], "local cluster")
    holds = pq.read_table(root / "both-deps" / "holds.parquet").to_pandas()
    assert list(holds.devices) == [2, 1]  # the cluster's start (both runs' devices), then its own trial
    compared = deps_orch("compare", "--group", "both", "--root", str(root), "--format", "json")
    assert compared.returncode == 0 and sorted(r["run"] for r in json.loads(compared.stdout)["runs"]) == sorted(runs)

    # Submitted again: each run finds itself finished; nothing is trained or written twice.
    before = {run: _ledger(root / run) for run in runs}
    again = deps_orch("submit", str(path), cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for run in runs:
        pd.testing.assert_frame_equal(_ledger(root / run), before[run])
        assert len(pq.read_table(root / run / "subnets.parquet")) == 2
