"""The DepS job for real on the embedded local backend, watched as it runs (nothing mocked).

One `deps-orch submit` on the local backend (its Ray head has the dashboard on
127.0.0.1 and exports metrics on a port the test chooses) serves every test here:
while it runs, the fixture scrapes the metrics endpoint, asks the dashboard's
Train API for the run (with Ray's token, and without), and runs `status` and
`dashboard`; afterwards the tests check what was seen, the ledger and the
evaluated subnets, the forecast measured at launch against what the run spent,
the reports, and (last) that submitting the finished run again adds nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from orchestrator.backends.local import METRICS_PORT_ENV
from orchestrator.cost.catalog import lookup_price
from orchestrator.dashboard import TRAIN_RUNS_API, dashboard_get
from tests.conftest import REPO, deps_orch
from tests.held_time import assert_held_time_adds_up
from workers.data import datasets
from workers.evaluation import SubnetEvaluator
from workers.job import WorkerSpec
from workers.rundir.forecast import load_forecast
from workers.rundir.schemas import EPOCH_SCHEMA, SUBNET_SCHEMA
from workers.supernet.space import SubnetConfig, mobilenetv3_space

pytestmark = pytest.mark.ray

RUN = "watched-dm"
SAMPLE = re.compile(r"^(ray_deps_orch_\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Watched:
    run_dir: Path
    root: Path
    returncode: int = -1
    output: str = ""
    metrics: dict[str, list[tuple[dict, float]]] = field(default_factory=dict)  # last scrape during training
    train_run: dict | None = None
    unauthorized: int | None = None
    status_during: str = ""
    dashboard_during: str = ""
    seconds: float = 0.0
    dry_run: dict = field(default_factory=dict)  # what `submit --dry-run` printed before the run
    dry_run_wrote: bool = False
    spec_path: Path | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(LABEL.findall(match.group(2)))
            samples.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return samples


def _ours(samples: dict, name: str) -> list[tuple[dict, float]]:
    return [(labels, value) for labels, value in samples.get(name, []) if labels.get("run") == RUN]


def _state(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "state.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> Watched:
    tmp = tmp_path_factory.mktemp("dashboard")
    spec = {
        "run": RUN,
        "dataset": {"name": "digits", "resolution": 16, "batch_size": 32, "train_subset": 512},
        "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
        # Warmup trains the full model alone, shrinking three subnets a step: the two phases differ in cost.
        "method": {"name": "deps", "epochs": 4, "warmup_fraction": 0.5, "eps_ramp_epochs": 1, "subnets_per_step": 3},
        "optimizer": {"lr": 0.1, "lr_batch": 64},
        "cluster": {"num_workers": 2, "cpus_per_worker": 1},
        "evaluation": {"subnets": 2, "calibration_images": 128, "calibration_batch_size": 64, "workers": 2},
        "storage": {"root": str(tmp / "runs")},
        "budget": {"max_dollars": 10.0},
    }
    spec_path = tmp / "watched.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    seen = Watched(run_dir=tmp / "runs" / RUN, root=tmp / "runs", spec_path=spec_path)
    dry = deps_orch("submit", str(spec_path), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    seen.dry_run, seen.dry_run_wrote = yaml.safe_load(dry.stdout), seen.root.exists()
    port = _free_port()
    exe = Path(sys.executable).with_name("deps-orch")
    started = time.time()
    process = subprocess.Popen(
        [str(exe), "submit", str(spec_path)],
        cwd=REPO,
        env={**os.environ, METRICS_PORT_ENV: str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while process.poll() is None and time.time() - started < 600:
            time.sleep(1.0)
            state = _state(seen.run_dir)
            samples = _scrape(port)
            epochs = _ours(samples, "ray_deps_orch_epoch")
            if state == "TRAINING" and epochs and epochs[0][1] >= 1:
                seen.metrics = samples
            cluster_file = seen.run_dir / "ray.json"
            if state == "TRAINING" and cluster_file.exists():
                url = json.loads(cluster_file.read_text())["dashboard_url"]
                try:
                    runs = dashboard_get(url, TRAIN_RUNS_API)["train_runs"]
                    mine = [r for r in runs if r["name"] == RUN]
                    if mine and mine[0]["attempts"] and mine[0]["attempts"][-1]["workers"]:
                        seen.train_run = mine[0]
                except OSError:
                    pass
                if seen.unauthorized is None:
                    try:
                        urllib.request.urlopen(url + TRAIN_RUNS_API, timeout=3)
                        seen.unauthorized = 200
                    except urllib.error.HTTPError as error:
                        seen.unauthorized = error.code
                    except OSError:
                        pass
                if not seen.status_during:
                    seen.status_during = deps_orch("status", "--root", str(seen.root)).stdout
                    seen.dashboard_during = deps_orch("dashboard", RUN, "--root", str(seen.root)).stdout
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    seen.returncode, seen.output, seen.seconds = process.returncode, output, time.time() - started
    return seen


def test_the_run_succeeds(watched):
    assert watched.returncode == 0, watched.output
    assert _state(watched.run_dir) == "SUCCEEDED"


def test_our_metrics_reach_the_metrics_endpoint_tagged_by_run_and_method(watched):
    samples = watched.metrics
    assert samples, "no scrape of the metrics endpoint held our gauges while the run trained"

    def value(name: str) -> float:
        (labels, number), *rest = _ours(samples, name)
        assert not rest and labels["method"] == "deps", (name, labels)
        return number

    assert 1 <= value("ray_deps_orch_epoch") <= 4 and value("ray_deps_orch_epochs_total") == 4
    assert 0.0 <= value("ray_deps_orch_epsilon") <= 1.0
    assert 0 < value("ray_deps_orch_images_per_second") < 100_000
    assert value("ray_deps_orch_budget_dollars") == 10.0
    spent, hours, forecast = (
        value("ray_deps_orch_dollars"),
        value("ray_deps_orch_device_hours"),
        value("ray_deps_orch_forecast_dollars"),
    )
    ledger = pq.read_table(watched.run_dir / "epochs.parquet").to_pylist()
    assert 0 < spent <= sum(r["dollars"] for r in ledger) + 1e-9  # what was spent when scraped
    assert 0 < hours <= sum(r["device_hours"] for r in ledger) + 1e-9
    assert spent < forecast < 10 * spent * 4  # the forecast total covers what was spent and the rest
    assert value("ray_deps_orch_eta_seconds") >= 0
    phases = {labels["phase"]: number for labels, number in _ours(samples, "ray_deps_orch_phase")}
    assert set(phases) <= {"warmup", "shrinking"} and sum(phases.values()) == 1.0


def test_the_dashboard_train_api_shows_the_run_and_its_workers_with_rays_token(watched):
    assert watched.unauthorized == 401  # the dashboard API refuses requests without the token
    run = watched.train_run
    assert run is not None, "the Train state API never listed the run"
    assert run["status"] in ("RUNNING", "FINISHED")
    workers = run["attempts"][-1]["workers"]
    assert sorted(w["world_rank"] for w in workers) == [0, 1]
    assert run["run_settings"]["scaling_config"]["num_workers"] == 2


def test_status_and_dashboard_while_it_runs(watched):
    assert RUN in watched.status_during and "TRAINING" in watched.status_during, watched.status_during
    assert re.search(r"\[[#.]{20}\]\s+\d+%", watched.status_during)
    assert "up, Ray" in watched.dashboard_during and "Authorization: Bearer" in watched.dashboard_during
    assert "ray get-auth-token" in watched.dashboard_during or "RAY_AUTH_TOKEN" in watched.dashboard_during
    # submit shows the same progress lines in the terminal
    assert re.search(rf"\[{RUN}\] TRAINING\s+epoch \d/4 \[[#.]{{20}}\]", watched.output), watched.output


def test_dry_run_prints_the_plan_and_a_measured_forecast_and_writes_nothing(watched):
    plan = watched.dry_run
    assert plan["run"] == RUN and plan["budget"]["max_dollars"] == 10.0
    forecast = plan["forecast"]
    assert [(p["phase"], p["epochs"]) for p in forecast["phases"]] == [("warmup", 2), ("shrinking", 2)]
    warmup, shrinking = forecast["phases"]
    assert warmup["subnets_per_step"] == 1.0 and shrinking["subnets_per_step"] == 3.0
    assert shrinking["epoch_seconds"] > 0 and warmup["epoch_seconds"] > 0
    total = forecast["training"]["device_hours"] + forecast["evaluation"]["device_hours"]
    assert forecast["total"]["device_hours"] == pytest.approx(total, abs=2e-6)
    assert forecast["evaluation"]["subnets"] == 4
    assert not watched.dry_run_wrote


def test_the_forecast_measured_in_the_training_job_is_the_one_cost_report_compares_with(watched):
    # How close it comes is a measurement (docs/BENCHMARKS.md), not a test: it depends on the machine's load.
    forecast = load_forecast(watched.run_dir)
    assert forecast is not None and forecast.measured_in_run and forecast.training_jobs == 1
    assert [(p.phase, p.first_epoch, p.epochs) for p in forecast.phases] == [("warmup", 0, 2), ("shrinking", 2, 2)]
    assert forecast.eval_subnets == 4 and forecast.eval_seconds > 0
    # The forecast is of held time: the start-up until the workers' set-up (at least the local cluster's
    # start) and the evaluation workers' start are in it, priced at every held device.
    holds = pq.read_table(watched.run_dir / "holds.parquet").to_pylist()
    (hold,) = holds
    assert 0 < forecast.startup_seconds < hold["held_seconds"]
    # (the workers' measured set-up, without the training job's first-step extra that `setup_seconds` adds)
    assert forecast.eval_setup_seconds == pytest.approx(forecast.profile["setup_seconds"])
    assert forecast.eval_setup_seconds <= forecast.setup_seconds
    actual = hold["device_hours"]
    error = actual / forecast.total_device_hours - 1.0
    dry = watched.dry_run["forecast"]["total"]["device_hours"]
    print(
        f"\nforecast {forecast.total_device_hours:.5f} device-hours, actual {actual:.5f} ({100 * error:+.1f} %); "
        f"the dry run's {dry:.5f} ({100 * (actual / dry - 1):+.1f} %); set-up {forecast.setup_seconds:.1f}s; "
        f"measured in {forecast.measure_seconds:.1f}s; whole submit {watched.seconds:.0f}s"
    )
    report = deps_orch("cost-report", RUN, "--root", str(watched.root), "--format", "json")
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["forecast_device_hours"] == pytest.approx(forecast.total_device_hours)
    assert row["forecast_error_pct"] == pytest.approx(100 * error, abs=1e-6)


def test_logs_tell_the_runs_story(watched):
    logs = deps_orch("logs", RUN, "--root", str(watched.root))
    assert logs.returncode == 0, logs.stderr
    text = logs.stdout
    order = ["state FORECASTING", "forecast:", "state TRAINING", "epoch 4/4 shrinking", "state EVALUATING"]
    positions = [text.find(marker) for marker in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), text
    assert text.rstrip().endswith("state SUCCEEDED")


def _ledger(run_dir: Path) -> pd.DataFrame:
    return pq.read_table(run_dir / "epochs.parquet").to_pandas().sort_values("epoch").reset_index(drop=True)


def test_the_ledger_prices_every_epoch_and_records_the_methods_scalars(watched):
    run_dir = watched.run_dir
    ledger = _ledger(run_dir)
    assert pq.read_schema(run_dir / "epochs.parquet").names == EPOCH_SCHEMA.names
    assert list(ledger.epoch) == [0, 1, 2, 3]
    # Warmup: 2 of 4 epochs train the full model alone; shrinking trains 3 subnets a step.
    assert list(ledger.phase) == ["warmup", "warmup", "shrinking", "shrinking"]
    assert list(ledger.subnets_per_step) == [1.0, 1.0, 3.0, 3.0]
    assert ledger.subnet_loss[:2].isna().all() and ledger.subnet_loss[2:].notna().all()
    # ε: 0 in warmup; linear per batch over 1 epoch of 8 steps from 1e-4, recorded at each epoch's last step.
    epsilon = [dict(s)["epsilon"] for s in ledger.scalars]  # DepS's own scalar, by name
    assert epsilon[:2] == [0.0, 0.0]
    assert epsilon[2] == pytest.approx(1e-4 + (1 - 1e-4) * 7 / 8)
    assert epsilon[3] == 1.0
    # Ledger arithmetic: device-hours = (wall + overhead) x devices / 3600; dollars = device-hours x price.
    price = lookup_price("cpu", "on_demand").per_device_hour
    assert (ledger.devices == 2).all() and (ledger.device_type == "cpu").all()
    assert (ledger.price_per_device_hour == price).all()
    expected_hours = (ledger.wall_seconds + ledger.overhead_seconds) * 2 / 3600
    assert ledger.device_hours.to_numpy() == pytest.approx(expected_hours.to_numpy())
    assert ledger.dollars.to_numpy() == pytest.approx((ledger.device_hours * price).to_numpy())
    assert (ledger.images == 8 * 64).all()
    assert ledger.images_per_second.to_numpy() == pytest.approx((ledger.images / ledger.wall_seconds).to_numpy())
    # The set-up and the forecast measured in the training job are charged to its first epoch.
    forecast = load_forecast(run_dir)
    assert forecast.measured_in_run and ledger.overhead_seconds[0] > forecast.measure_seconds > 0
    # Every second between two epochs (the checkpoint's report, the diagnostics) is the next epoch's overhead.
    assert (ledger.overhead_seconds[1:] > 0).all() and (ledger.overhead_seconds[1:] < ledger.overhead_seconds[0]).all()
    assert ledger.lr.is_monotonic_decreasing
    assert json.loads((run_dir / "attempts.json").read_text())["attempts"] == 1  # one worker group for all of it


def test_the_subnets_are_calibrated_evaluated_and_priced(watched):
    run_dir = watched.run_dir
    subnets = pq.read_table(run_dir / "subnets.parquet").to_pandas()
    assert pq.read_schema(run_dir / "subnets.parquet").names == SUBNET_SCHEMA.names
    space = mobilenetv3_space(0.35, cifar=True, resolution=16)
    ids = set(subnets.subnet_id)
    assert len(subnets) == 4 and {space.smallest().subnet_id, space.largest().subnet_id} <= ids
    assert subnets.macs.min() < subnets.macs.max() and (subnets.top5 >= subnets.top1).all()
    assert (subnets.calibration_images == 128).all() and (subnets.test_images == 360).all()
    assert (subnets.checkpoint_epoch == 3).all()
    # Every evaluated subnet was timed as a deployment runs it, at batch 1 and the spec's batch, on its worker.
    assert (subnets.latency_ms > 0).all() and (subnets.batch_latency_ms > 0).all()
    assert (subnets.latency_batch_size == 16).all() and (subnets.latency_threads == 1).all()
    assert subnets.latency_device.str.len().gt(0).all()
    largest = subnets.loc[subnets.macs.idxmax()]
    assert largest.top1 > 50.0  # 10 classes: chance is 10 %
    price = lookup_price("cpu", "on_demand").per_device_hour
    assert subnets.dollars.to_numpy() == pytest.approx((subnets.device_hours * price).to_numpy())

    report = deps_orch("cost-report", RUN, "--root", str(watched.root), "--format", "json")
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["epochs"] == 4 and row["train_dollars"] == pytest.approx(_ledger(run_dir).dollars.sum())
    assert row["largest_top1"] == pytest.approx(largest.top1)
    table = deps_orch("cost-report", str(run_dir))
    assert "dev-min/epoch" in table.stdout and RUN in table.stdout
    everything = deps_orch("cost-report", "--root", str(watched.root), "--format", "json")  # no name: every run
    assert [r["run"] for r in json.loads(everything.stdout)] == [RUN]
    # The local cluster's life is the run's held time: it reconciles, and it is inside the submit's own wall.
    assert_held_time_adds_up(run_dir, row, "local cluster")
    assert row["held_device_hours"] * 3600 / 2 <= watched.seconds
    print(
        f"\nheld time of the local run: {row['held_device_hours'] * 3600 / 2:.1f} s of {watched.seconds:.1f} s "
        f"submit wall; useful {row['useful_device_hours']:.5f} + overhead {row['overhead_device_hours']:.5f} "
        f"+ lost {row['lost_device_hours']:.5f} = held {row['held_device_hours']:.5f} dev-h"
    )


def test_the_diagnostics_and_the_comparison_with_every_plot(watched):
    run_dir = watched.run_dir
    # Rank 0 took the diagnostics: heatmaps at the end of warmup (epoch 1) and of training (epoch 3), the gradient
    # probe at the start of shrinking, without changing what training recorded.
    heat = pd.read_parquet(run_dir / "class_correlation.parquet")
    assert sorted(heat.epoch.unique()) == [1, 3] and len(heat) == 2 * 10 * 10
    grads = pd.read_parquet(run_dir / "gradients.parquet")
    assert set(grads.epoch) == {1} and set(grads.probe_phase) == {"shrinking"} and set(grads.run) == {RUN}

    report = deps_orch("compare", RUN, "--root", str(watched.root))
    assert report.returncode == 0, report.stderr
    assert f"| {RUN} | deps | SUCCEEDED | 4 |" in report.stdout and "### Best subnet per FLOP bucket" in report.stdout
    plots = watched.root / "_compare" / RUN
    assert sorted(p.name for p in plots.glob("*.png")) == [
        "class_correlation.png",
        "cost.png",
        "gradients.png",
        "pareto.png",
        "pareto_latency.png",
    ]
    assert "### Best subnet per latency bucket (top-1 % @ ms at batch 1" in report.stdout


def test_the_console_shows_our_lines_and_run_log_keeps_the_libraries(watched):
    lines = [line for line in watched.output.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith((f"[{RUN}]", "run ", "---"))]
    table_rows = [line for line in lines if line.startswith(RUN + " ")]  # the cost table's row
    assert len(ours) + len(table_rows) == len(lines), [line for line in lines if line not in ours + table_rows]
    for noise in ("Warning", "core_worker.cc", "find_unused_parameters", "Grad strides"):
        assert noise not in watched.output
    log = (watched.run_dir / "run.log").read_text()
    assert "[library]" in log
    assert "PreemptionWatcher" not in log  # nothing drains this machine's nodes: a local run starts no watcher


def _reference(run_dir: Path, config: SubnetConfig, images: torch.Tensor) -> torch.Tensor:
    """The supernet's output with `config` active, BN calibrated as evaluation does."""
    work = WorkerSpec.model_validate(json.loads((run_dir / "worker_spec.json").read_text()))
    stages = json.loads((run_dir / "stages.json").read_text())
    state = torch.load(max(stages.values(), key=lambda s: s["first_epoch"])["checkpoint"], weights_only=True)
    evaluator = SubnetEvaluator(work, state["model"], 10, 1, test_limit=0)
    evaluator.calibrate([config.to_dict()])
    evaluator.net.eval()
    with torch.no_grad():
        return evaluator.net(images.contiguous(memory_format=torch.channels_last))


def test_the_best_subnet_under_a_mac_limit_exports_as_torchscript_and_onnx(watched, tmp_path):
    import onnxruntime

    subnets = pq.read_table(watched.run_dir / "subnets.parquet").to_pandas()
    limit = float(subnets.macs.median())
    admitted = subnets[subnets.macs <= limit].sort_values(["top1", "macs"], ascending=[False, True])
    best = admitted.iloc[0]
    assert best.macs < subnets.macs.max()  # the limit excludes the most accurate-by-size subnet at least
    config = SubnetConfig.from_json(best.config)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = _reference(watched.run_dir, config, images)
    dataset = WorkerSpec.model_validate(json.loads((watched.run_dir / "worker_spec.json").read_text())).dataset
    test_images, labels = datasets.to_tensors(datasets.test_dataset(dataset), 256, 0)
    model_input = datasets.normalization(dataset).to_model_input
    test_input = model_input(test_images, torch.device("cpu"), config.resolution).contiguous()

    for fmt in ("torchscript", "onnx"):
        out = tmp_path / f"best.{fmt}"
        done = deps_orch(
            "export", RUN, "--best", "--max-macs", str(limit), "--format", fmt, "-o", str(out),
            "--root", str(watched.root),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"{out}: subnet {best.subnet_id} of {RUN}")
        sidecar = json.loads(out.with_name(out.name + ".json").read_text())
        assert sidecar["subnet_id"] == best.subnet_id and sidecar["format"] == fmt and sidecar["run"] == RUN
        assert (sidecar["macs"], sidecar["params"]) == (best.macs, best.params)
        assert sidecar["top1"] == best.top1 and sidecar["checkpoint_epoch"] == 3
        assert sidecar["latency_ms"] == best.latency_ms and sidecar["input"]["shape"] == [1, 3, 16, 16]
        assert SubnetConfig.from_dict(sidecar["config"]) == config
        if fmt == "torchscript":
            module = torch.jit.load(str(out))
            assert sum(p.numel() for p in module.parameters()) == best.params
            with torch.no_grad():
                got = module(images)
                predicted = module(test_input).argmax(1)
        else:
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"image": images.numpy()})[0])
            predicted = torch.from_numpy(session.run(None, {"image": test_input.numpy()})[0]).argmax(1)
        assert (got - expected).abs().max() <= 1e-5
        # Calibrated as evaluation did: the file's own top-1 on the test split is the table's.
        assert 100.0 * float((predicted == labels).float().mean()) == pytest.approx(best.top1, abs=100 / len(labels))

    default = deps_orch("export", RUN, best.subnet_id[:10], "--format", "state_dict", "--root", str(watched.root))
    assert default.returncode == 0, default.stderr
    assert (watched.run_dir / "exports" / f"{best.subnet_id}.pth").exists()
    for args, message in [
        (("--best", "--max-macs", "1"), "no evaluated subnet meets MACs <= 1e-06M"),
        (("nosuchid",), "no evaluated subnets have that id"),
        ((), "name a SUBNET_ID or ask for --best"),
        ((best.subnet_id, "--max-macs", "1"), "--max-macs and --max-latency-ms go with --best"),
    ]:
        refused = deps_orch("export", RUN, *args, "--root", str(watched.root))
        assert refused.returncode == 2 and message in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr


def test_submitting_the_finished_run_again_trains_and_evaluates_nothing_more(watched):
    before = _ledger(watched.run_dir)
    again = deps_orch("submit", str(watched.spec_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 subnets evaluated" in again.stdout
    pd.testing.assert_frame_equal(_ledger(watched.run_dir), before)
    assert len(pq.read_table(watched.run_dir / "subnets.parquet")) == 4
