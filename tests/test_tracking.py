"""MLflow records for real: a tracking server on 127.0.0.1 (started and stopped here), a short run pointed at it,
and its params and per-epoch metrics read back through MLflow's client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.backends.ray_node import free_port
from tests.conftest import deps_orch

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--default-artifact-root",
            str(store / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # its worker process starts late on a busy machine
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("the MLflow server did not answer /health within 300 s")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_a_run_logs_its_spec_and_every_epoch_to_the_tracking_server(tracking_server, tiny_spec):
    from mlflow.tracking import MlflowClient

    path = tiny_spec("tracked", forecast={"measure": False}, tracking={"uri": tracking_server, "experiment": "t"})
    done = deps_orch("submit", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = path.parent / "runs" / "tracked"
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["uri"] == tracking_server and record["logged_epochs"] == 4

    client = MlflowClient(tracking_uri=tracking_server)
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.tags["deps_orch.state"] == "SUCCEEDED" and run.data.tags["deps_orch.method"] == "deps"
    params = run.data.params
    assert params["method.name"] == "deps" and params["method.epochs"] == "4" and params["optimizer.lr"] == "0.1"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in loss) == [0, 1, 2, 3]  # every epoch once
    ledger = {r["epoch"]: r for r in _ledger(run_dir)}
    assert {m.step: m.value for m in loss} == pytest.approx({e: r["loss"] for e, r in ledger.items()})
    dollars = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dollars")}
    assert dollars == pytest.approx({e: r["dollars"] for e, r in ledger.items()})
    assert {m.step for m in client.get_metric_history(run.info.run_id, "epsilon")} == {0, 1, 2, 3}
    assert "plots/cost.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]

    again = deps_orch("submit", str(path))  # a finished run submitted again logs nothing twice
    assert again.returncode == 0, again.stderr
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4


def _ledger(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "epochs.parquet").to_pylist()
