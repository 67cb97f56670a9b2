"""End to end: `deps-orch submit` records the DepS diagnostics while training and evaluates FLOP buckets;
`deps-orch compare` then prints the comparison and writes every plot."""

import pandas as pd
import pytest

from tests.conftest import deps_orch

pytestmark = pytest.mark.ray


def test_submit_then_compare_with_diagnostics_and_plots(tiny_spec, tmp_path):
    spec = tiny_spec("e2e-cmp", evaluation={"selection": {"name": "buckets", "buckets": 3, "per_bucket": 1}})
    result = deps_orch("submit", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "e2e-cmp"

    subnets = pd.read_parquet(run_dir / "subnets.parquet")
    assert len(subnets) == 3 and set(subnets.selection) == {"buckets"}
    # Rank 0 took the diagnostics: heatmaps at the end of warmup (epoch 1) and of training (epoch 3), the gradient
    # probe at the start of shrinking, without changing what training recorded.
    heat = pd.read_parquet(run_dir / "class_correlation.parquet")
    assert sorted(heat.epoch.unique()) == [1, 3] and len(heat) == 2 * 10 * 10
    grads = pd.read_parquet(run_dir / "gradients.parquet")
    assert set(grads.epoch) == {1} and set(grads.probe_phase) == {"shrinking"} and set(grads.run) == {"e2e-cmp"}
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert list(epochs.epoch) == [0, 1, 2, 3]

    report = deps_orch("compare", "e2e-cmp", "--root", str(tmp_path / "runs"))
    assert report.returncode == 0, report.stderr
    assert "| e2e-cmp | deps | 3 |" in report.stdout and "### Best subnet per FLOP bucket" in report.stdout
    plots = tmp_path / "runs" / "_compare" / "e2e-cmp"
    assert sorted(p.name for p in plots.glob("*.png")) == [
        "class_correlation.png",
        "cost.png",
        "gradients.png",
        "pareto.png",
    ]
