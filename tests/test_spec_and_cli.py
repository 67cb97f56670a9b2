import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.spec_file import load_spec
from tests.conftest import REPO, deps_orch
from tests.disk_formats import write_cifar10


def write(tmp_path: Path, data: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"run": "x", "method": {"name": "deps", "epochz": 3}},
            r"method\.epochz: unknown field; allowed: epochs, eps_ramp_epochs, eps_start, kd_temperature, name",
        ),
        ({"run": "x", "method": {"name": "nas-magic"}}, r"method\.name: unknown 'nas-magic'; allowed: 'deps'"),
        (
            {"run": "x", "method": {"name": "deps"}, "space": {"kernel_choices": [3, 4]}},
            r"space\.kernel_choices\[1\]: Input should be 3, 5 or 7 \(got 4\)",
        ),
        (
            {"run": "x", "method": {"name": "deps"}, "clustr": {}},
            r"clustr: unknown field; allowed: budget, cluster, cost",
        ),
        ({"run": "../../etc", "method": {"name": "deps"}}, r"run: '../../etc' is not a run name"),
        ({"run": "x"}, r"method: missing \(required\)"),
        (
            {"run": "x", "method": {"name": "deps", "warmup_fraction": 1.5}},
            r"method\.warmup_fraction: Input should be less than 1",
        ),
    ],
)
def test_bad_specs_are_one_line_naming_file_and_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(UserError, match=f"^{path}: {message}") as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_set_overrides_any_field_with_typed_values(tmp_path):
    path = write(tmp_path, {"run": "x", "method": {"name": "deps"}})
    spec = load_spec(path, ["method.epochs=7", "space.kernel_choices=[7]", "cluster.num_workers=1", "run=y"])
    assert spec.method.epochs == 7 and spec.space.kernel_choices == (7,) and spec.cluster.num_workers == 1
    assert spec.run == "y"
    with pytest.raises(UserError, match="method.bogus: unknown field"):
        load_spec(path, ["method.bogus=1"])
    with pytest.raises(UserError, match="expected a.b.c=value"):
        load_spec(path, ["method.epochs"])


def test_a_spec_is_checked_without_loading_torch(tmp_path):
    """Every command checks its spec first; a mistake in it is reported in well under a second, not after torch."""
    path = write(tmp_path, {"run": "x", "method": {"name": "bignas", "teacher_divergence": "alpha_divergence"}})
    script = (
        "import sys; from pathlib import Path; from orchestrator.spec_file import load_spec; "
        f"spec = load_spec(Path({str(path)!r})); spec.runs(); print(sorted(m for m in sys.modules if m == 'torch'))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_errors_exit_2_with_one_line_and_no_traceback(tmp_path, capsys):
    spec_errors = [
        (write(tmp_path, {"run": "x", "method": {"name": "dep"}}, "a.yaml"), "method.name: unknown 'dep'"),
        (write(tmp_path, "run: [unclosed", "b.yaml"), "not valid YAML"),
        (tmp_path / "missing.yaml", "no such spec file"),
    ]
    plan_errors = [
        (
            write(
                tmp_path,
                {
                    "run": "x",
                    "method": {"name": "deps"},
                    "dataset": {"name": "cifar10", "root": str(tmp_path / "none")},
                },
                "c.yaml",
            ),
            "dataset.root: .* has no cifar-10-batches-py/",
        ),
        (
            write(tmp_path, {"run": "x", "method": {"name": "deps"}, "cluster": {"num_workers": 64}}, "d.yaml"),
            "cluster: 64 workers x 1 CPUs = 64, but this machine has",
        ),
    ]
    for path, message in spec_errors:  # as a user runs it: a process of its own
        result = deps_orch("submit", str(path), "--dry-run")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert re.search(message, result.stderr), result.stderr
    for path, message in plan_errors:  # the same entry point, in this process: it loads torch and Ray only once
        assert main(["submit", str(path), "--dry-run"]) == 2
        captured = capsys.readouterr()
        assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("deps-orch: error: ")
        assert re.search(message, captured.err), captured.err
        assert captured.out == ""
    result = deps_orch("cost-report", "no-such-run", "--root", str(tmp_path))
    assert result.returncode == 2 and "no-such-run: no run there" in result.stderr


def test_dry_run_prints_the_resolved_plan(tmp_path):
    root = write_cifar10(tmp_path / "data")
    result = deps_orch(
        "submit",
        str(REPO / "jobspecs/quickstart.yaml"),
        "--dry-run",
        "--no-forecast",  # the plan alone; the measured forecast is tested in test_budget.py
        "--set",
        "dataset.name=cifar10",
        "--set",
        f"dataset.root={root}",
        "--set",
        "dataset.resolution=32",
        "--set",
        "method.epochs=20",
        "--set",
        f"storage.root={tmp_path / 'runs'}",
    )
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    assert plan["phases"] == [
        {"phase": "warmup", "first_epoch": 0, "last_epoch": 9},
        {"phase": "shrinking", "first_epoch": 10, "last_epoch": 19},
    ]
    assert plan["dataset"]["train_images"] == 100 and plan["dataset"]["classes"] == 10
    assert plan["cost"]["device_type"] == "cpu" and plan["cost"]["devices"] == 2
    assert plan["cost"]["training_dollars_per_hour"] == pytest.approx(2 * plan["cost"]["price_per_device_hour"])
    assert plan["cluster"]["collective_backend"] == "gloo"
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_every_shipped_jobspec_validates():
    for path in sorted((REPO / "jobspecs").glob("*.yaml")):
        load_spec(path)
