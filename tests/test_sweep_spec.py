"""A sweep's trials as values: what each trial sets, its name, and the one-line errors of a sweep at fault."""

import math

import pytest
import yaml

from orchestrator.errors import UserError
from orchestrator.spec_file import load_spec
from orchestrator.sweep import concurrent_trials
from orchestrator.sweep_spec import SweepSpec
from orchestrator.sweep_trials import sweep_trials, with_values

BASE = {
    "run": "sw",
    "dataset": {"name": "digits", "resolution": 16, "batch_size": 32},
    "method": {"name": "deps", "epochs": 4},
    "cluster": {"num_workers": 1},
}


def _load(tmp_path, sweep: dict, **extra):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra, "sweep": sweep}))
    return load_spec(path)


def test_grids_multiply_and_random_draws_repeat_from_the_seed():
    sweep = SweepSpec.model_validate(
        {
            "parameters": {
                "method.warmup_fraction": {"grid": [0.0, 0.5]},
                "optimizer.lr": {"loguniform": [0.01, 0.3]},
                "method.subnets_per_step": {"choice": [2, 4]},
            },
            "num_samples": 2,
        }
    )
    trials = sweep_trials(sweep, "sw", seed=0)
    assert len(trials) == 4 and [t.index for t in trials] == [0, 1, 2, 3]
    assert [t.values["method.warmup_fraction"] for t in trials] == [0.0, 0.5, 0.0, 0.5]
    assert all(0.01 <= t.values["optimizer.lr"] <= 0.3 for t in trials)
    assert all(t.values["method.subnets_per_step"] in (2, 4) for t in trials)
    assert len({t.values["optimizer.lr"] for t in trials}) == 4  # every trial draws anew
    assert sweep_trials(sweep, "sw", seed=0) == trials and sweep_trials(sweep, "sw", seed=1) != trials
    assert len({t.name for t in trials}) == 4 and trials[1].name.startswith("sw-t1-warmup_fraction0.5-lr")


def test_each_trial_is_an_ordinary_run_grouped_under_the_sweep_with_the_metric_on(tmp_path):
    spec = _load(tmp_path, {"parameters": {"optimizer.lr": {"grid": [0.1, 0.02]}}, "validation_images": 64})
    runs = spec.runs()
    assert [r.run for r in runs] == ["sw-t0-lr0.1", "sw-t1-lr0.02"]
    assert [r.optimizer.lr for r in runs] == [0.1, 0.02] and {r.group for r in runs} == {"sw"}
    assert all(r.sweep is None and r.evaluation.validation.enabled for r in runs)
    assert {r.evaluation.validation.images for r in runs} == {64}


@pytest.mark.parametrize(
    "sweep, extra, message",
    [
        ({"parameters": {"optimizer.lrr": {"grid": [0.1]}}}, {}, r"sweep\.parameters\.optimizer\.lrr: Extra inputs"),
        ({"parameters": {"optimizer.lr": {"grid": [-1]}}}, {}, r"sweep\.parameters\.optimizer\.lr: Input should be"),
        ({"parameters": {"optimizer.lr": {"grid": [0.1], "choice": [1]}}}, {}, r"give one of grid, choice"),
        ({"parameters": {"optimizer.lr": {"loguniform": [0, 1]}}}, {}, r"loguniform: the bounds must be positive"),
        ({"parameters": {}}, {}, r"sweep\.parameters: Dictionary should have at least 1 item"),
        ({"parameters": {"optimizer.lr": {"grid": [0.1]}}, "metric": "acc"}, {}, r"sweep\.metric: Input should be"),
        (
            {"parameters": {"optimizer.lr": {"grid": [0.1]}}},
            {"method": None, "methods": ["deps", "ofa"]},
            r"give method, not methods",
        ),
    ],
)
def test_a_sweep_at_fault_is_one_line_naming_the_field(tmp_path, sweep, extra, message):
    with pytest.raises(UserError, match=message) as info:
        spec = _load(tmp_path, sweep, **extra)
        spec.runs()
    assert "\n" not in str(info.value)


def test_no_more_trials_run_at_once_than_the_cluster_fits(tmp_path):
    spec = _load(tmp_path, {"parameters": {"optimizer.lr": {"grid": [0.1, 0.2, 0.3]}}})
    plans = [type("P", (), {"spec": r})() for r in spec.runs()]
    assert concurrent_trials(spec.sweep, plans, cluster_cpus=2.0) == 2
    assert concurrent_trials(spec.sweep, plans, cluster_cpus=16.0) == 3
    assert concurrent_trials(spec.sweep.model_copy(update={"max_concurrent": 1}), plans, 16.0) == 1
    assert concurrent_trials(spec.sweep, plans, cluster_cpus=0.5) == 1


def test_with_values_sets_dotted_paths_on_a_copy():
    data = {"a": {"b": 1}, "c": 2}
    assert with_values(data, {"a.b": 3, "d.e": 4}) == {"a": {"b": 3}, "c": 2, "d": {"e": 4}}
    assert data == {"a": {"b": 1}, "c": 2}
    assert math.isclose(with_values({}, {"x": 0.5})["x"], 0.5)
