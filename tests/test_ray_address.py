"""`cluster.backend: ray`: a tiny spec sent to a running `ray start --head` cluster (the session's shared one)
through the real Jobs API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from orchestrator.ray_env import auth_token
from tests.conftest import deps_orch

pytestmark = pytest.mark.ray


def test_a_tiny_spec_runs_as_a_ray_job_on_an_existing_cluster(shared_cluster, tiny_spec, tmp_path):
    ray_head = shared_cluster.dashboard
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
    assert job["status"] == "SUCCEEDED" and "orchestrator.driver" in job["entrypoint"]
    assert job["metadata"]["deps_orch_run"] == "ray-address"
