"""A sweep's trials as values: what each trial sets, its name, and the one-line errors of a sweep at fault."""

import math

import pytest
import yaml

from orchestrator.errors import UserError
from orchestrator.spec_file import load_spec
from orchestrator.sweep_spec import SweepSpec
from orchestrator.sweep_trials import sweep_trials, with_values
from orchestrator.tune_runs import runs_at_once

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
    assert runs_at_once(plans, {"CPU": 2.0}, spec.sweep.max_concurrent) == 2
    assert runs_at_once(plans, {"CPU": 16.0}, None) == 3
    assert runs_at_once(plans, {"CPU": 16.0}, 1) == 1
    assert runs_at_once(plans, {"CPU": 0.5}, None) == 1


def test_a_comparison_runs_as_many_methods_at_once_as_the_gpus_and_cpus_fit(tmp_path):
    path = tmp_path / "methods.yaml"
    gpu = {"num_workers": 4, "cpus_per_worker": 2, "gpus_per_worker": 1, "accelerator": "A100"}
    path.write_text(yaml.safe_dump({**BASE, "method": None, "methods": ["deps", "ofa", "bignas"], "cluster": gpu}))
    spec = load_spec(path)
    plans = [type("P", (), {"spec": r})() for r in spec.runs()]
    assert runs_at_once(plans, {"CPU": 64.0, "GPU": 8.0}, None) == 2  # 4 GPUs a run: the GPUs decide
    assert runs_at_once(plans, {"CPU": 8.0, "GPU": 16.0}, None) == 1  # 8 CPUs a run: the CPUs do
    assert runs_at_once(plans, {"CPU": 64.0, "GPU": 16.0}, None) == 3  # no more than the runs
    assert runs_at_once(plans, {"CPU": 64.0, "GPU": 16.0}, 2) == 2
    assert runs_at_once(plans, {"CPU": 64.0}, None) == 1  # no GPU in the cluster: one at a time, never zero
    assert all(r.max_concurrent is None for r in spec.runs())  # a member is one run


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_concurrent": 2}, "max_concurrent"),  # one method: nothing to run at once
        ({"max_concurrent": 0, "method": None, "methods": ["deps", "ofa"]}, "max_concurrent"),
    ],
)
def test_max_concurrent_belongs_to_a_methods_comparison(tmp_path, extra, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    with pytest.raises(UserError, match=field):
        load_spec(path)


def test_with_values_sets_dotted_paths_on_a_copy():
    data = {"a": {"b": 1}, "c": 2}
    assert with_values(data, {"a.b": 3, "d.e": 4}) == {"a": {"b": 3}, "c": 2, "d": {"e": 4}}
    assert data == {"a": {"b": 1}, "c": 2}
    assert math.isclose(with_values({}, {"x": 0.5})["x"], 0.5)
