"""Any spec file at all ends in a plan or in one line naming what is wrong (exit code 2), never a traceback.

Hypothesis writes specs of every kind a user can get wrong: a valid spec with values of the wrong type,
unknown keys, numbers out of range, sections that are not mappings, documents that are not mappings,
YAML that does not parse, bytes that are not text; and `submit --dry-run --no-forecast` (in this
process) must print the plan or exactly one `deps-orch: error:` line.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main

BASE = {
    "run": "prop",
    "seed": 0,
    "dataset": {"name": "digits", "resolution": 16, "batch_size": 32, "train_subset": 256},
    "space": {"width_mult": 0.35, "cifar_variant": True, "kernel_choices": [3, 5, 7], "depth_choices": [2, 3]},
    "method": {"name": "deps", "epochs": 4, "warmup_fraction": 0.5, "subnets_per_step": 3},
    "optimizer": {"lr": 0.1, "lr_batch": 64, "weight_decay": 5e-5},
    "cluster": {"backend": "local", "num_workers": 1, "cpus_per_worker": 1},
    "cost": {"pricing": "on_demand"},
    "evaluation": {"subnets": 0, "calibration_images": 64, "workers": 1, "selection": "spread"},
    "storage": {"root": "runs-never-written"},
    "budget": {"max_dollars": 1.0},
    "forecast": {"measure": False, "steps": 2},
}


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the spec, sections and leaves alike."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        found.append(prefix + (key,))
        found += _paths(value, prefix + (key,))
    return found


PATHS = _paths(BASE)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-9, 9), st.text(max_size=4)), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-9, 9), max_size=3),
)
OUT_OF_RANGE = st.sampled_from([-1, 0, -0.5, 10**9, 1e300, -1e-9, float("nan")])


@st.composite
def edited_specs(draw: st.DrawFn) -> str:
    """The valid spec with up to four edits: values replaced, keys dropped or added, numbers pushed out of range."""
    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        path = draw(st.sampled_from(PATHS))
        parent = spec
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        edit = draw(st.sampled_from(["replace", "drop", "unknown", "out_of_range"]))
        if edit == "replace":
            parent[path[-1]] = draw(ANY_VALUE)
        elif edit == "drop":
            parent.pop(path[-1], None)
        elif edit == "unknown":
            parent[draw(st.text(min_size=1, max_size=8))] = draw(ANY_VALUE)
        else:
            parent[path[-1]] = draw(OUT_OF_RANGE)
    return yaml.safe_dump(spec, allow_unicode=True)


DOCUMENTS = st.one_of(
    edited_specs(),
    st.builds(yaml.safe_dump, ANY_VALUE),  # YAML that is not a mapping
    st.text(max_size=60),  # anything typed into a file
    st.sampled_from(["run: [unclosed", "a: b: c", "\t- x", "{run: x", "run: *nothing", "---\n---\n"]),
)


def _submit(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _plan_or_one_line(code: int, out: str, err: str) -> None:
    if code == 0:
        assert yaml.safe_load(out)["run"], out
        return
    assert code == 2, (code, out, err)
    assert err.startswith("deps-orch: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out, (out, err)


@settings(max_examples=700, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=DOCUMENTS)
def test_a_spec_of_text_is_a_plan_or_one_line(text: str, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(text)
    _plan_or_one_line(*_submit(["submit", str(path), "--dry-run", "--no-forecast"]))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=80))
def test_a_spec_of_bytes_is_a_plan_or_one_line(data: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_bytes(data)
    _plan_or_one_line(*_submit(["submit", str(path), "--dry-run", "--no-forecast"]))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from([".".join(p) for p in PATHS] + ["nope", "a..b", "=", ".x", "dataset.nope.deeper"]),
    value=st.one_of(st.text(max_size=10), st.sampled_from(["-1", "1e400", "[1, 2", "{a: 1}", "null", "yes"])),
)
def test_a_set_override_is_a_plan_or_one_line(key: str, value: str, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    _plan_or_one_line(*_submit(["submit", str(path), "--dry-run", "--no-forecast", "--set", f"{key}={value}"]))


def test_a_directory_or_a_missing_file_as_the_spec_is_one_line(tmp_path: Path) -> None:
    for path, why in ((tmp_path, "is a directory"), (tmp_path / "missing.yaml", "no such spec file")):
        code, out, err = _submit(["submit", str(path), "--dry-run"])
        _plan_or_one_line(code, out, err)
        assert code == 2 and why in err
