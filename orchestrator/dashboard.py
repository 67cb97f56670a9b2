"""`deps-orch dashboard [RUN]`: where a run's Ray dashboard is, whether it is up, and how to sign in to it.

The address comes from the run's `ray.json`, written by its controller when the
cluster came up. Ray runs with token authentication: the dashboard's web page
asks for the token once (and keeps it in a cookie), API calls send it as
`Authorization: Bearer <token>`. The token itself is never printed, only where
it is and how to read it.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.ray_env import auth_token, token_path
from orchestrator.status import find_run_dir, read_cluster, read_status, run_dirs

TRAIN_RUNS_API = "/api/train/v2/runs/v1"


def dashboard_get(url: str, path: str, timeout: float = 3.0) -> dict:
    """GET a dashboard API path with Ray's token; raises OSError when the dashboard is not reachable."""
    request = urllib.request.Request(url.rstrip("/") + path, headers={"Authorization": f"Bearer {auth_token()}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _pick_run(run: str | None, root: Path) -> Path:
    if run is not None:
        return find_run_dir(run, root)
    recorded = [d for d in run_dirs(root) if read_cluster(d).get("dashboard_url")]
    if not recorded:
        raise UserError(f"no run under {root} has recorded a Ray cluster yet; deps-orch submit starts one")
    running = [d for d in recorded if read_status(d).running]
    return (running or recorded)[0]


def dashboard_text(run: str | None, root: Path) -> str:
    run_dir = _pick_run(run, root)
    cluster = read_cluster(run_dir)
    url = cluster.get("dashboard_url")
    if not url:
        raise UserError(f"{run_dir.name}: no Ray cluster recorded (ray.json); the run has not started on a cluster")
    status = read_status(run_dir)
    try:
        version = dashboard_get(url, "/api/version").get("ray_version", "?")
        state = f"up, Ray {version}"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        state = f"not reachable now ({reason}); a local cluster lives only while its submit runs"
    if os.environ.get("RAY_AUTH_TOKEN"):
        token_hint = "the token in $RAY_AUTH_TOKEN"
        header = "$RAY_AUTH_TOKEN"
    else:
        token_hint = f"the token in {token_path()} (print it with: ray get-auth-token)"
        header = f"$(cat {token_path()})"
    host = cluster.get("host") or socket.gethostname()
    port = url.rsplit(":", 1)[-1].strip("/")
    lines = [
        f"run:        {status.run} ({status.state_label})",
        f"dashboard:  {url}  ({state})",
        f"sign in:    token authentication is on: the page asks for {token_hint}",
        f'train runs: curl -H "Authorization: Bearer {header}" {url}{TRAIN_RUNS_API}',
    ]
    for endpoint in cluster.get("metrics", []):
        lines.append(f"metrics:    http://{endpoint}/metrics  (Prometheus text; ours are ray_deps_orch_*)")
    if "127.0.0.1" in url or "localhost" in url:
        where = f"{host}'s loopback" if host != socket.gethostname() else "this machine's loopback"
        lines.append(f"tunnel:     it listens on {where}; from elsewhere: ssh -N -L {port}:127.0.0.1:{port} {host}")
    return "\n".join(lines)
