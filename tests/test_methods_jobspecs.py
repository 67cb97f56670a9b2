"""Every shipped job spec validates with `submit --dry-run`, and the papers' specs carry METHODS.md's numbers."""

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.spec_file import load_spec
from tests.conftest import REPO
from tests.disk_formats import write_cifar10, write_cifar100, write_image_folder
from workers.methods import build_method
from workers.supernet.space_spec import build_space

SPECS = sorted(p.name for p in (REPO / "jobspecs").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "cifar10": write_cifar10(root / "cifar10"),
        "cifar100": write_cifar100(root / "cifar100"),
        "imagefolder": write_image_folder(root / "imagenet"),
    }


@pytest.mark.parametrize("name", SPECS)
def test_every_jobspec_passes_submit_dry_run(name, tiny_data, tmp_path, capsys):
    """The real data is not here: the tiny stand-in in the same on-disk format takes its place (and a batch it fits)."""
    spec = load_spec(REPO / "jobspecs" / name)
    args = ["submit", str(REPO / "jobspecs" / name), "--dry-run", "--no-forecast"]
    args += ["--set", f"storage.root={tmp_path}"]
    if spec.dataset.name != "digits":
        args += ["--set", f"dataset.root={tiny_data[spec.dataset.name]}", "--set", "dataset.batch_size=1"]
    assert main(args) == 0, capsys.readouterr().err
    described = yaml.safe_load(capsys.readouterr().out)
    several = spec.methods is not None or spec.sweep is not None
    plans = described["runs"] if several else [described]
    assert [p["run"] for p in plans] == [r.run for r in spec.runs()]
    for plan, run in zip(plans, spec.runs()):
        assert plan["stages"] and plan["phases"] and plan["method"]["name"] == run.method.name
        if several:
            assert plan["group"] == described["comparison"] == spec.run
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def _spec(name: str):
    return load_spec(REPO / "jobspecs" / name)


def _methods(name: str) -> dict:
    return {r.method.name: r for r in _spec(name).runs()}


@pytest.mark.parametrize("name,classes", [("cifar10.yaml", "cifar10"), ("cifar100.yaml", "cifar100")])
def test_cifar_specs_carry_the_deps_papers_recipe(name, classes):
    runs = _methods(name)
    assert set(runs) == {"deps", "ofa", "bignas", "compofa"}
    for run in runs.values():
        assert run.dataset.name == classes and run.dataset.resolution == 32 and run.dataset.batch_size == 128
        assert run.cluster.num_workers == 1  # global batch 128
        assert run.optimizer.lr == 0.1 and run.optimizer.lr_batch == 128 and run.optimizer.weight_decay == 5e-4
        assert run.optimizer.name == "sgd" and run.optimizer.nesterov and run.optimizer.momentum == 0.9
        assert run.optimizer.label_smoothing == 0.1 and run.space.dropout == 0.1 and run.dataset.auto_augment
        assert run.space.kernel_choices == (7,) and run.space.cifar_variant and run.space.bn_momentum == 0.01
        assert run.group == name.removesuffix(".yaml")
    deps = runs["deps"].method
    assert deps.epochs == 200 and deps.warmup_epochs == 100 and deps.eps_start == 1e-4 and deps.subnets_per_step == 4
    bignas = runs["bignas"].method
    assert bignas.epochs == 200 and bignas.lr_constant_ending == 0.05 and bignas.subnets_per_step == 4
    ofa = runs["ofa"].method
    assert [(p.epochs, p.lr) for p in (ofa.depth1, ofa.depth2, ofa.expand1, ofa.expand2)] == [
        (25, 2.5e-3),
        (120, 7.5e-3),
        (25, 2.5e-3),
        (120, 7.5e-3),
    ]
    space = build_space(runs["ofa"])
    assert [s.name for s in build_method(ofa, space).stages()] == ["teacher", "depth1", "depth2", "expand1", "expand2"]


def test_imagenet100_spec_carries_the_deps_papers_recipe():
    runs = _methods("imagenet100.yaml")
    assert set(runs) == {"deps", "ofa", "bignas", "compofa"}
    for run in runs.values():
        assert run.optimizer.lr == 0.143 and run.optimizer.lr_batch == 128 and run.optimizer.weight_decay == 5e-4
        assert run.space.dropout == 0.1 and run.dataset.resolution == 224
        assert run.dataset.batch_size * run.cluster.num_workers == 128
    assert runs["deps"].method.epochs == 180 and runs["deps"].method.warmup_epochs == 100
    assert runs["bignas"].method.epochs == 180 and runs["bignas"].optimizer.name == "sgd"


def test_imagenet_baseline_specs_carry_table_2s_epochs():
    """Table 2: OFA 605 epochs, CompOFA 330, BigNAS 400 (RMSProp); AlphaNet: 360 with α-divergence."""
    epochs = {}
    for name in ("imagenet-ofa.yaml", "imagenet-compofa.yaml", "imagenet-bignas.yaml", "imagenet-alphanet.yaml"):
        spec = _spec(name)
        epochs[name] = build_method(spec.method, build_space(spec)).epochs
        assert spec.group == "imagenet" and spec.cluster.accelerator == "A40"
        assert spec.cluster.num_workers * spec.cluster.gpus_per_worker == 16
        assert spec.space.dropout == 0.1 and spec.optimizer.weight_decay == 3e-5
    assert epochs == {
        "imagenet-ofa.yaml": 605,
        "imagenet-compofa.yaml": 330,
        "imagenet-bignas.yaml": 400,
        "imagenet-alphanet.yaml": 360,
    }
    ofa = _spec("imagenet-ofa.yaml")
    assert ofa.space.kernel_choices == (3, 5, 7) and ofa.method.kd_weight == 1.0 and ofa.method.phase_lr_batch == 64
    assert (ofa.method.kernel.epochs, ofa.method.kernel.lr, ofa.method.kernel.subnets_per_step) == (120, 3e-2, 1)
    assert ofa.method.expand2.subnets_per_step == 4
    compofa = _spec("imagenet-compofa.yaml")
    assert (compofa.method.phase1.epochs, compofa.method.phase1.lr) == (25, 0.01)
    assert (compofa.method.phase2.epochs, compofa.method.phase2.lr, compofa.method.phase2.warmup_epochs) == (
        120,
        0.03,
        5,
    )
    bignas = _spec("imagenet-bignas.yaml")
    assert bignas.optimizer.name == "rmsprop" and bignas.method.lr_constant_ending == 0.05
    assert bignas.method.zero_init_residual_gamma
    alphanet = _spec("imagenet-alphanet.yaml")
    divergence = alphanet.method.teacher_divergence
    assert (divergence.name, divergence.alpha_min, divergence.alpha_max, divergence.clip) == (
        "alpha_divergence",
        -1.0,
        1.0,
        5.0,
    )
    assert alphanet.method.subnets_per_step == 4 and alphanet.optimizer.grad_clip_norm == 1.0


def test_rss_spec_covers_every_scheme_with_the_rss_short_recipe():
    spec = _spec("rss-cifar100.yaml")
    configs = [r.method for r in spec.runs()]
    assert {(c.selection, c.sampling, c.subnets_per_step) for c in configs} == {
        ("random", "per_epoch", 1),
        ("random", "per_batch", 1),
        ("random", "per_batch", 2),
        ("smallest", "per_epoch", 1),
        ("middle", "per_epoch", 1),
        ("largest", "per_epoch", 1),
        ("max_then_min", "per_epoch", 1),
        ("min_then_max", "per_epoch", 1),
        ("alternating", "per_epoch", 1),
    }
    assert all(c.epochs == 180 for c in configs)
    assert spec.dataset.name == "cifar100" and spec.dataset.batch_size * spec.cluster.num_workers == 64
    assert spec.optimizer.lr == 0.01 and spec.optimizer.lr_batch == 64 and spec.space.dropout == 0.1
    assert spec.evaluation.selection.targets_mmacs == (4, 6, 8, 10, 12) and spec.evaluation.selection.per_target == 100
