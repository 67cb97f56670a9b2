"""`cluster.backend: ray`: a tiny spec sent to a running `ray start --head` cluster through the real Jobs API."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.backends.ray_node import free_port, session_members, start_command, start_node
from orchestrator.ray_env import auth_token
from tests.conftest import deps_orch

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head like one on a cloud or KubeRay cluster: token auth on, dashboard (and Jobs API) on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("ray-head")
    dashboard_port = free_port()
    temp_dir = Path(tempfile.gettempdir()) / f"deps-ray-test-{os.getpid()}"  # short: Ray's socket paths
    command = start_command(
        head_address=None,
        port=free_port(),
        num_cpus=os.cpu_count() or 2,
        num_gpus=0,
        expose_dashboard=False,
        temp_dir=temp_dir,
        dashboard_port=dashboard_port,
    )
    node = start_node(command, logs / "head.log")
    try:
        node.wait_ready(180)
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not session_members(node.session)


def test_a_tiny_spec_runs_as_a_ray_job_on_an_existing_cluster(ray_head, tiny_spec, tmp_path):
    # Token authentication stays on: the Jobs API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head}/api/jobs/", timeout=30)
    assert refused.value.code == 401

    spec = tiny_spec(
        "ray-address",
        method={"epochs": 2, "warmup_fraction": 0.5},
        cluster={"backend": "ray", "address": ray_head},
        evaluation={"subnets": 0},
        forecast={"measure": False},
    )
    result = deps_orch("submit", str(spec), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "ray-address"
    record = json.loads((run_dir / "ray-job.json").read_text())
    assert f"Ray job {record['submission_id']}" in result.stdout and "SUCCEEDED" in result.stdout

    ledger = pq.read_table(run_dir / "epochs.parquet").to_pandas()
    assert sorted(ledger.epoch) == [0, 1] and (ledger.devices == 2).all()
    assert len(pq.read_table(run_dir / "subnets.parquet")) == 2
    assert json.loads((run_dir / "state.json").read_text())["state"] == "SUCCEEDED"

    # The cluster's Jobs API knows the job: it ran there, with our token, as this interpreter's driver.
    request = urllib.request.Request(
        f"{ray_head}/api/jobs/{record['submission_id']}", headers={"Authorization": f"Bearer {auth_token()}"}
    )
    job = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert job["status"] == "SUCCEEDED" and "orchestrator.backends.driver" in job["entrypoint"]
    assert job["metadata"]["deps_orch_run"] == "ray-address"
