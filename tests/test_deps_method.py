import random

import pytest
from pydantic import ValidationError

from workers.methods import Target, build_method
from workers.methods.deps import DepSConfig
from workers.supernet.space import mobilenetv3_space

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)


def deps(**kwargs):
    return build_method(DepSConfig(**kwargs), SPACE)


def test_warmup_then_shrinking_phase_boundary():
    method = deps(epochs=270, warmup_fraction=150 / 270)  # the ImageNet-1k recipe
    assert method.phase(149) == "warmup" and method.phase(150) == "shrinking"
    assert [method.phase(e) for e in range(270)].count("warmup") == 150
    cifar = deps(epochs=200, warmup_fraction=0.5)
    assert cifar.phase(99) == "warmup" and cifar.phase(100) == "shrinking"


def test_warmup_trains_the_full_model_alone_with_labels():
    steps = deps(epochs=10).steps(0, 0, 20, random.Random(0))
    assert len(steps) == 1
    assert steps[0].config == SPACE.largest() and steps[0].target is Target.LABELS
    assert steps[0].grad_weight == 1.0 and steps[0].dropout


def test_shrinking_is_sandwich_with_eps_scaled_inplace_kd():
    method = deps(epochs=10, warmup_fraction=0.5, subnets_per_step=4, eps_start=1e-4, eps_ramp_epochs=5)
    steps = method.steps(5, 0, 20, random.Random(0))
    assert len(steps) == 4
    full, smallest, *rest = steps
    assert full.config == SPACE.largest() and full.target is Target.LABELS and full.is_teacher
    assert full.grad_weight == 1.0
    assert smallest.config == SPACE.smallest()
    for s in [smallest, *rest]:
        assert s.target is Target.INPLACE_KD and s.grad_weight == pytest.approx(1e-4) and not s.dropout


def test_epsilon_ramps_linearly_per_batch_then_holds():
    method = deps(epochs=20, warmup_fraction=0.5, eps_start=1e-4, eps_ramp_epochs=5)
    spe = 100
    assert method.epsilon(9, 99, spe) == 0.0  # warmup: no subnet trains
    assert method.epsilon(10, 0, spe) == pytest.approx(1e-4)
    quarter = method.epsilon(11, 25, spe)  # 125 of 500 ramp steps
    assert quarter == pytest.approx(1e-4 + (1 - 1e-4) * 0.25)
    values = [method.epsilon(10 + i // spe, i % spe, spe) for i in range(500)]
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert all(d == pytest.approx(diffs[0]) for d in diffs)  # constant step
    assert method.epsilon(15, 0, spe) == 1.0 and method.epsilon(19, 99, spe) == 1.0


def test_all_ranks_sample_the_same_subnets_for_a_step():
    method = deps(epochs=10)
    a = method.steps(7, 3, 20, random.Random(42))
    b = method.steps(7, 3, 20, random.Random(42))
    assert [s.config for s in a] == [s.config for s in b]


def test_config_rejects_a_run_without_shrinking():
    with pytest.raises(ValidationError, match="no shrinking epoch"):
        DepSConfig(epochs=2, warmup_fraction=0.9)
