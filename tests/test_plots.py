"""The DepS diagnostics recorded during training, and the comparison's PNG plots drawn from them."""

import math

import pytest
import torch
from PIL import Image

from orchestrator.reports.compare import compare
from orchestrator.reports.plots import write_plots
from orchestrator.spec_file import load_spec
from tests.conftest import one_thread_float32
from tests.test_results_dataset import write_run
from workers.diagnostics import (
    DiagnosticsConfig,
    check_epochs,
    class_correlation,
    gradient_epochs,
    heatmap_epochs,
    record_diagnostics,
)
from workers.methods import build_method
from workers.rundir.tables import RunStore
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet


def test_class_correlation_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.0, 2.0, 0.0]])  # predictions: 0, 0, 1; never 2
    matrix, counts = class_correlation(logits, 3)
    assert counts.tolist() == [2, 1, 0]
    assert matrix[0, 0].item() == pytest.approx(1.0) and matrix[1, 1].item() == pytest.approx(1.0)
    # cos([3, 1, 0], [1, 2, 0]) = 5 / (sqrt(10) sqrt(5))
    assert matrix[0, 1].item() == pytest.approx(5 / math.sqrt(50)) == pytest.approx(matrix[1, 0].item())
    assert matrix[2].isnan().all() and matrix[:, 2].isnan().all()


@pytest.fixture
def tiny(tiny_spec):
    spec = load_spec(
        tiny_spec("diag", evaluation={"diagnostics": {"enabled": True}})
    ).worker_spec()  # DepS, 4 epochs: warmup 0-1, shrinking 2-3, 3 subnets per step
    method = build_method(spec.method, build_space(spec), spec.seed)
    with one_thread_float32():
        torch.manual_seed(0)
        net = build_supernet(spec, build_space(spec), 10).to(memory_format=torch.channels_last)
        yield spec, method, net


def test_default_epochs_are_the_ends_of_phases_and_bad_ones_are_named(tiny):
    _, method, _ = tiny
    assert heatmap_epochs(DiagnosticsConfig(), method) == {1, 3}  # partially and fully trained full model
    assert gradient_epochs(DiagnosticsConfig(), method) == {1}  # the start of shrinking
    assert heatmap_epochs(DiagnosticsConfig(enabled=False), method) == set()
    assert gradient_epochs(DiagnosticsConfig(gradient_epochs=(0, 2)), method) == {0, 2}
    with pytest.raises(ValueError, match=r"evaluation\.diagnostics\.gradient_epochs\[0\]: epoch 3 is outside 0-2"):
        check_epochs(DiagnosticsConfig(gradient_epochs=(3,)), method)
    with pytest.raises(ValueError, match=r"evaluation\.diagnostics\.heatmap_epochs\[1\]: epoch 4 is outside 0-3"):
        check_epochs(DiagnosticsConfig(heatmap_epochs=(0, 4)), method)


def test_diagnostics_at_the_start_of_shrinking_and_plots_of_them(tiny, tmp_path):
    spec, method, net = tiny
    store = RunStore(tmp_path / "runs" / "diag")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    for epoch in range(4):
        record_diagnostics(spec, store, method, net, epoch, steps_per_epoch=8, rank=1)  # only rank 0 records
    assert not store.run_dir.exists()
    for epoch in (0, 1, 3):
        record_diagnostics(spec, store, method, net, epoch, steps_per_epoch=8, rank=0)
    # The model and the training RNG are untouched.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng_before)

    heat = store.class_correlation().to_pandas()
    assert sorted(heat.epoch.unique()) == [1, 3] and len(heat) == 2 * 10 * 10
    first = heat[heat.epoch == 1]
    assert first.groupby("predicted_class").predicted_count.first().sum() == 360  # every test image predicted once
    predicted = first[first.predicted_count > 0]
    diagonal = predicted[predicted.predicted_class == predicted.other_class]
    assert diagonal.cosine.to_numpy() == pytest.approx(1.0)
    assert first[first.predicted_count == 0].cosine.isna().all()

    grads = store.gradients().to_pandas()
    assert list(grads.epoch.unique()) == [1] and set(grads.probe_phase) == {"shrinking"}
    layers = grads.layer_index.nunique()
    assert len(grads) == 3 * layers and layers > 20
    by = {kind: g.set_index("layer_index") for kind, g in grads.groupby("gradient")}
    assert by["no_shrink"].cosine_to_no_shrink.to_numpy() == pytest.approx(1.0)
    assert by["eps_shrink"].student_weight.iloc[0] == pytest.approx(1e-4)  # ε at the first shrinking step
    # G_Shrink(ε) = G_noShrink + ε S and G_Shrink = G_noShrink + S: with ε = 1e-4 the subnets' S barely moves
    # the gradient, with weight 1 it moves it far more (on this untrained net the teacher is weak, so S is small;
    # after the quick-start's real warmup G_Shrink's norm is about 28x G_noShrink's, their mean cosine 0.13).
    assert by["eps_shrink"].cosine_to_no_shrink.min() > 0.999
    assert (by["eps_shrink"].l2_norm / by["no_shrink"].l2_norm).to_numpy() == pytest.approx(1.0, rel=1e-2)
    shrink_gap = (1 - by["shrink"].cosine_to_no_shrink).mean()
    assert shrink_gap > 100 * (1 - by["eps_shrink"].cosine_to_no_shrink).mean() and shrink_gap > 0
    assert (by["shrink"].l2_norm - by["no_shrink"].l2_norm).abs().mean() > 100 * (
        by["eps_shrink"].l2_norm - by["no_shrink"].l2_norm
    ).abs().mean()

    write_run(tmp_path / "runs", "diag", "deps", [(2_000_000, 40.0), (9_000_000, 60.0)], [("warmup", 2)] * 4)
    plots = write_plots(compare([store.run_dir]), tmp_path / "plots")
    assert [p.name for p in plots] == ["pareto.png", "cost.png", "class_correlation.png", "gradients.png"]
    for path in plots:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 600 and image.height > 300
    only = write_plots(compare([store.run_dir]), tmp_path / "only", heatmap_epochs=[3])
    assert (tmp_path / "only" / "class_correlation.png") in only
