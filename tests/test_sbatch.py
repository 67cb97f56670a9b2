"""The Slurm backend without Slurm: the script submitit writes, quoting, spec checks, the Ray commands."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.backends.ray_node import start_command, visible_gpus
from orchestrator.backends.sbatch import environment_lines, sbatch_options, sbatch_script
from orchestrator.errors import UserError
from orchestrator.spec_file import load_spec
from tests.conftest import REPO, deps_orch

GOLDEN_IMAGENET = """\
#!/bin/bash

# Parameters
#SBATCH --constraint=a40
#SBATCH --cpus-per-task=32
#SBATCH --error=/runs/imagenet-deps/slurm/%j/%j_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=deps-imagenet-deps
#SBATCH --mem=240G
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/runs/imagenet-deps/slurm/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --time=1440
#SBATCH --wckey=submitit

# setup
export NCCL_DEBUG=WARN

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/imagenet-deps/slurm/%j/%j_%t_log.out \
--error /runs/imagenet-deps/slurm/%j/%j_%t_log.err \
/opt/venv/bin/python -u -m submitit.core._submit /runs/imagenet-deps/slurm/%j
"""


def _spec(tmp_path: Path, cluster: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"run": "r", "method": {"name": "deps"}, "cluster": cluster}))
    return path


def test_the_imagenet_spec_renders_the_golden_sbatch_script():
    spec = load_spec(REPO / "jobspecs" / "imagenet.yaml")
    script = sbatch_script(spec, "/runs/imagenet-deps/slurm/%j", "/opt/venv/bin/python")
    assert script == GOLDEN_IMAGENET.replace("\\\n", "")


NASTY = 'it\'s a $(touch /tmp/pwned) `id`; rm -rf / "x" & y'


def test_every_user_value_is_quoted_in_the_script(tmp_path):
    cluster = {
        "backend": "slurm",
        "slurm": {
            "partition": NASTY,
            "account": "acct with spaces",
            "qos": "q;q",
            "constraint": "a40|a100&[x]",
            "job_name": "name $HOME",
            "extra_sbatch": {"comment": NASTY, "mail_type": "END,FAIL", "exclusive": True, "hold": False},
            "env": {"MY_VAR": NASTY, "OTHER": "plain"},
        },
    }
    spec = load_spec(_spec(tmp_path, cluster))
    script = sbatch_script(spec, str(tmp_path / "slurm dir" / "%j"), "/opt/my venv/bin/python")
    parsed = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (token,) = shlex.split(line.removeprefix("#SBATCH "))  # one shell word, whatever the value
            key, _, value = token.partition("=")
            parsed[key] = value
    assert parsed["--partition"] == NASTY and parsed["--comment"] == NASTY
    assert parsed["--account"] == "acct with spaces" and parsed["--qos"] == "q;q"
    assert parsed["--constraint"] == "a40|a100&[x]" and parsed["--job-name"] == "name $HOME"
    assert parsed["--mail-type"] == "END,FAIL" and parsed["--exclusive"] == "" and "--hold" not in parsed
    assert parsed["--output"] == str(tmp_path / "slurm dir" / "%j" / "%j_0_log.out")
    # The exports, run by a real shell, give back exactly the values.
    shell = "\n".join(environment_lines(spec) + ['printf "%s|%s" "$MY_VAR" "$OTHER"'])
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout == f"{NASTY}|plain"
    assert not Path("/tmp/pwned").exists()
    # The interpreter path is one word on the srun line too.
    assert "'/opt/my venv/bin/python' -u -m submitit.core._submit" in script


@pytest.mark.parametrize(
    "cluster,message",
    [
        (
            {"backend": "slurm", "slurm": {"partiton": "gpu"}},
            r"cluster\.slurm\.partiton: unknown field; allowed: account, constraint, cpus_per_node, env, extra_sbatch,",
        ),
        ({"backend": "slurm", "slurm": {"account": "a\nb"}}, r"cluster\.slurm\.account: account: control characters"),
        (
            {"backend": "slurm", "slurm": {"extra_sbatch": {"time": "10"}}},
            r"cluster\.slurm\.extra_sbatch: 'time' is set by deps-orch; use cluster\.slurm\.time_minutes",
        ),
        (
            {"backend": "slurm", "slurm": {"extra_sbatch": {"output": "/x"}}},
            r"cluster\.slurm\.extra_sbatch: 'output' is set by deps-orch",
        ),
        ({"backend": "slurm", "slurm": {"extra_sbatch": {"Bad Key": 1}}}, r"not an sbatch option name"),
        ({"backend": "slurm", "slurm": {"env": {"1X": "v"}}}, r"'1X' is not an environment variable name"),
        (
            {"backend": "slurm", "num_workers": 8, "gpus_per_worker": 1, "accelerator": "A40", "slurm": {"nodes": 1}},
            r"cluster: 8 workers x 1 GPUs = 8, but cluster\.slurm asks for 1 nodes x 0 GPUs = 0",
        ),
        (
            {"backend": "slurm", "num_workers": 4, "cpus_per_worker": 4, "slurm": {"nodes": 2, "cpus_per_node": 4}},
            r"cluster\.slurm\.cpus_per_node: 4, but 2 workers x 4 CPUs on a node need 8",
        ),
        ({"backend": "local", "slurm": {}}, r"cluster\.slurm is for backend slurm, not local"),
        ({"backend": "ray"}, r"cluster\.address is needed for backend ray"),
        ({"backend": "ray", "address": "8265"}, r"'8265' is not an http\(s\) URL or auto"),
    ],
)
def test_bad_cluster_sections_are_one_line_naming_the_field(tmp_path, cluster, message):
    path = _spec(tmp_path, cluster)
    with pytest.raises(UserError, match=message) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_slurm_defaults_follow_the_workers(tmp_path):
    spec = load_spec(_spec(tmp_path, {"backend": "slurm", "num_workers": 3, "cpus_per_worker": 2}))
    options = sbatch_options(spec)
    assert options["nodes"] == 1 and options["cpus-per-task"] == 6 and options["ntasks-per-node"] == 1
    assert options["time"] == 60 and options["signal"] == "USR2@120" and options["requeue"] is True
    assert "gpus-per-node" not in options and "partition" not in options


def test_dry_run_shows_the_slurm_plan_and_an_exposed_dashboard(tmp_path):
    cluster = {"backend": "slurm", "expose_dashboard": True, "slurm": {"price_per_device_hour": 0.01}}
    path = _spec(tmp_path, cluster)
    result = deps_orch("submit", str(path), "--dry-run", "--set", f"storage.root={tmp_path / 'runs'}")
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    assert "all interfaces" in plan["cluster"]["slurm"]["ray"]
    assert plan["cost"]["pricing"] == "internal" and plan["cost"]["price_per_device_hour"] == 0.01
    assert plan["cluster"]["slurm"]["dollars_per_hour"] == pytest.approx(0.02)
    assert not (tmp_path / "runs").exists()


def test_visible_gpus_reads_slurms_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == ["0"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({}) == []


def test_ray_start_commands_bind_the_dashboard_to_localhost_unless_exposed(tmp_path):
    head = start_command(head_address=None, port=6400, num_cpus=32, num_gpus=4, expose_dashboard=False)
    assert "--head" in head and "--block" in head and "--port=6400" in head
    assert "--dashboard-host=127.0.0.1" in head and "--num-gpus=4" in head and "--num-cpus=32" in head
    # Every port is chosen free, so two jobs (or a job and a local run) on one node do not collide.
    for option in ("--dashboard-port", "--dashboard-agent-listen-port", "--metrics-export-port"):
        assert any(arg.startswith(option + "=") for arg in head)
    exposed = start_command(head_address=None, port=6400, num_cpus=1, num_gpus=0, expose_dashboard=True)
    assert "--dashboard-host=0.0.0.0" in exposed
    worker = start_command(head_address="10.0.0.1:6400", port=None, num_cpus=8, num_gpus=2, expose_dashboard=False)
    assert "--address=10.0.0.1:6400" in worker and "--head" not in worker and "--num-gpus=2" in worker
    assert not any(arg.startswith("--dashboard-host") for arg in worker)
