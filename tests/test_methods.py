"""The defining behaviour of every method, without Ray: stages, which subnets each step trains, and how."""

import itertools
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from orchestrator.spec_file import validate_spec
from workers.distillation import AdaptiveAlphaDivergence, KLDivergence, build_distillation
from workers.methods import METHODS, Target, build_method
from workers.methods.bignas import BigNASConfig
from workers.methods.progressive import CompOFAConfig, OFAConfig
from workers.methods.rss import RSSConfig
from workers.stage_training import load_frozen_teacher, stage_schedule
from workers.step import run_step
from workers.supernet.space import mobilenetv3_space
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)
KERNEL_FIXED = mobilenetv3_space(0.35, cifar=True, resolution=16, kernel_choices=(7,))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rng(i: int = 0) -> random.Random:
    return random.Random(i)


def _tiny_spec(tmp_path: Path, method: dict, **sections) -> object:
    data = {
        "run": "unit",
        "dataset": {"name": "digits", "resolution": 16, "batch_size": 8},
        "space": {"width_mult": 0.35, "cifar_variant": True, "bn_momentum": 0.1},
        "method": method,
        "storage": {"root": str(tmp_path)},
        **sections,
    }
    return validate_spec(data, "unit.yaml")


# --- OFA: progressive shrinking -------------------------------------------------------------------


def test_ofa_stages_follow_the_paper_table():
    ofa = build_method(OFAConfig(teacher_epochs=180), SPACE)
    stages = ofa.stages()
    assert [s.name for s in stages] == ["teacher", "kernel", "depth1", "depth2", "expand1", "expand2"]
    # The OFA code's 5 warmup epochs come on top of the 120-epoch phases: 180 + 425 = 605, Table 2's figure.
    assert [s.epochs for s in stages] == [180, 125, 25, 125, 25, 125]
    assert [s.warmup_epochs for s in stages] == [None, 5, 0, 5, 0, 5]
    assert [s.subnets_per_step for s in stages] == [1, 1, 2, 2, 4, 4]
    assert [s.lr for s in stages] == [None, 3e-2, 2.5e-3, 7.5e-3, 2.5e-3, 7.5e-3]
    assert all(s.lr_batch == 64 and s.teacher == "teacher" and s.lr_floor == 0.0 for s in stages[1:])
    assert stages[0].teacher is None
    # Each phase opens more of the space, and starts where the previous one ended.
    opened = [(s.space.kernel_choices, s.space.depth_choices, s.space.expand_choices) for s in stages]
    assert opened == [
        ((7,), (4,), (6.0,)),
        ((3, 5, 7), (4,), (6.0,)),
        ((3, 5, 7), (3, 4), (6.0,)),
        ((3, 5, 7), (2, 3, 4), (6.0,)),
        ((3, 5, 7), (2, 3, 4), (4.0, 6.0)),
        ((3, 5, 7), (2, 3, 4), (3.0, 4.0, 6.0)),
    ]
    assert [s.first_epoch for s in stages] == [0, 180, 305, 330, 455, 480] and ofa.epochs == 605


def test_ofa_phase_boundaries_and_ledger_tags():
    ofa = build_method(OFAConfig(teacher_epochs=3, kernel={"epochs": 2}, depth1={"epochs": 1}), SPACE)
    tags = [ofa.phase(e) for e in range(ofa.epochs)]
    assert tags[:11] == ["teacher"] * 3 + ["kernel"] * 7 + ["depth1"]  # kernel: 5 warmup + 2 cosine epochs
    assert tags[11:] == ["depth2"] * 125 + ["expand1"] * 25 + ["expand2"] * 125
    with pytest.raises(ValueError, match="outside"):
        ofa.phase(ofa.epochs)


def test_ofa_with_a_fixed_kernel_skips_the_kernel_phase():
    ofa = build_method(OFAConfig(teacher_epochs=180), KERNEL_FIXED)
    assert [s.name for s in ofa.stages()] == ["teacher", "depth1", "depth2", "expand1", "expand2"]
    assert ofa.epochs - 180 == 25 + 125 + 25 + 125
    zero = build_method(OFAConfig(teacher_epochs=5, depth1={"epochs": 0}), KERNEL_FIXED)
    assert [s.name for s in zero.stages()] == ["teacher", "depth2", "expand1", "expand2"]
    two_depths = build_method(OFAConfig(), mobilenetv3_space(0.35, depth_choices=(3, 4)))
    assert [s.name for s in two_depths.stages()] == ["teacher", "kernel", "depth2", "expand1", "expand2"]


def test_ofa_steps_sample_the_open_space_with_labels_and_kd_from_the_frozen_teacher():
    ofa = build_method(OFAConfig(teacher_epochs=2, kd_weight=1.0), SPACE)
    (teacher_step,) = ofa.steps(0, 0, 10, _rng())
    assert teacher_step.config == SPACE.largest() and teacher_step.target is Target.LABELS and teacher_step.dropout
    for stage in ofa.stages()[1:]:
        for step in range(5):
            steps = ofa.steps(stage.first_epoch, step, 10, _rng(step))
            assert len(steps) == stage.subnets_per_step
            for s in steps:
                assert s.target is Target.LABELS_AND_KD and s.kd_weight == 1.0 and s.grad_weight == 1.0
                stage.space.validate(s.config)  # only what the phase has opened
    kernel_phase = ofa.stages()[1]
    kernels = {
        k
        for i in range(30)
        for st in ofa.steps(kernel_phase.first_epoch, i, 30, _rng(i))
        for k in st.config.stages[0].kernels
    }
    assert kernels == {3, 5, 7}
    depths = {st.config.depths for i in range(30) for st in ofa.steps(kernel_phase.first_epoch, i, 30, _rng(i))}
    assert depths == {(4, 4, 4, 4, 4)}


def test_ofa_frozen_teacher_stays_frozen_while_the_student_learns(tmp_path):
    spec = _tiny_spec(tmp_path, {"name": "ofa", "teacher_epochs": 1})
    space = build_space(spec)
    torch.manual_seed(0)
    trained = build_supernet(spec, space, 10)
    checkpoint = tmp_path / "teacher.pt"
    torch.save({"model": trained.state_dict(), "epoch": 0}, checkpoint)

    teacher = load_frozen_teacher(spec, space, 10, str(checkpoint), torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.active_subnet == space.largest()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    torch.manual_seed(1)
    student = build_supernet(spec, space, 10)
    student.load_state_dict(trained.state_dict())  # a phase starts from the previous stage's weights
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    method = build_method(spec.method, space)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    stage = method.stages()[-1]
    steps = method.steps(stage.first_epoch, 0, 10, _rng())
    loss = run_step(student, steps, images, labels, 0.1, KLDivergence(), teacher).first
    optimizer.step()
    assert loss > 0
    for name, value in teacher.state_dict().items():  # weights and BN running statistics alike
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), before.values()))
    with pytest.raises(RuntimeError, match="frozen teacher"):
        run_step(student, steps, images, labels, 0.1, KLDivergence(), None)


def test_labels_and_kd_loss_is_ce_plus_weighted_distillation(tmp_path):
    spec = _tiny_spec(tmp_path, {"name": "ofa", "teacher_epochs": 1, "kd_weight": 0.5})
    space = build_space(spec)
    torch.manual_seed(0)
    student, teacher = build_supernet(spec, space, 10).eval(), build_supernet(spec, space, 10).eval()
    method = build_method(spec.method, space)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    (step,) = method.steps(method.stages()[1].first_epoch, 0, 10, _rng())
    loss = run_step(student, [step], images, labels, 0.1, KLDivergence(), teacher).first
    with torch.no_grad():
        student.set_active_subnet(step.config)
        logits, t_logits = student(images), teacher(images)
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    p, log_q = torch.softmax(t_logits, 1), torch.log_softmax(logits, 1)
    kl = (p * (p.log() - log_q)).sum(1).mean()
    assert loss.item() == pytest.approx((ce + 0.5 * kl).item(), rel=1e-5)


# --- BigNAS --------------------------------------------------------------------------------------


def test_bignas_is_sandwich_with_inplace_kd_from_step_zero():
    bignas = build_method(BigNASConfig(epochs=10, subnets_per_step=4), SPACE)
    assert [s.name for s in bignas.stages()] == ["bignas"] and bignas.epochs == 10
    for epoch, step in [(0, 0), (0, 1), (9, 5)]:
        full, smallest, *random_ones = bignas.steps(epoch, step, 10, _rng(step))
        assert full.config == SPACE.largest() and full.target is Target.LABELS and full.is_teacher
        assert full.dropout and full.grad_weight == 1.0
        assert smallest.config == SPACE.smallest() and len(random_ones) == 2
        for s in [smallest, *random_ones]:
            # Regularisation on the largest only: no dropout for the others, full gradient weight.
            assert s.target is Target.INPLACE_KD and s.grad_weight == 1.0 and not s.dropout


def test_bignas_lr_follows_the_cosine_then_holds_at_five_percent(tmp_path):
    spec = _tiny_spec(tmp_path, {"name": "bignas", "epochs": 10}, optimizer={"lr": 0.1, "lr_batch": 8})
    method = build_method(spec.method, build_space(spec))
    schedule = stage_schedule(spec, method, method.stages()[0], global_batch=8, steps_per_epoch=10)
    lrs = [schedule.at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and min(lrs) == pytest.approx(0.005)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    held = [lr for lr in lrs if lr == pytest.approx(0.005)]
    assert 5 < len(held) < 30 and lrs[-len(held) :] == held  # a constant ending, not an asymptote
    assert lrs[50] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))
    deps = build_method(validate_spec({"run": "d", "method": {"name": "deps"}}, "d").method, SPACE)
    assert deps.lr_constant_ending() is None


def test_bignas_zero_initialises_the_last_bn_gamma_of_residual_blocks(tmp_path):
    spec = _tiny_spec(tmp_path, {"name": "bignas", "epochs": 2})
    space = build_space(spec)
    net = build_supernet(spec, space, 10)
    build_method(spec.method, space).init_weights(net)
    residual = net.residual_blocks()
    all_blocks = [net.first_block, *[b for stage in net.stages for b in stage]]
    assert 0 < len(residual) < len(all_blocks)
    for block in all_blocks:
        gamma = block.project_bn.bn.weight
        assert bool((gamma == 0).all()) == (block in residual)
    # A zero-γ residual block is the identity at the start, so added depth starts as a no-op.
    net.eval()
    x = torch.randn(2, residual[-1].in_channels, 4, 4)
    assert torch.allclose(residual[-1](x), x)
    untouched = build_supernet(spec, space, 10)
    build_method(validate_spec({"run": "d", "method": {"name": "deps"}}, "d").method, space).init_weights(untouched)
    assert all(bool((b.project_bn.bn.weight != 0).all()) for b in untouched.residual_blocks())


def test_bignas_optimizer_can_be_rmsprop(tmp_path):
    from workers.optim import build_optimizer

    spec = _tiny_spec(tmp_path, {"name": "bignas", "epochs": 2}, optimizer={"name": "rmsprop", "momentum": 0.9})
    net = build_supernet(spec, build_space(spec), 10)
    optimizer = build_optimizer(net, spec.optimizer, 0.01)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["eps"] == 1e-3
    assert isinstance(build_optimizer(net, _tiny_spec(tmp_path, {"name": "bignas"}).optimizer, 0.1), torch.optim.SGD)


# --- CompOFA -------------------------------------------------------------------------------------


def test_compofa_couples_depth_and_expand_with_a_fixed_kernel():
    compofa = build_method(CompOFAConfig(), SPACE)
    coupled = compofa.search_space
    assert coupled.depth_expand_coupling == {2: 3.0, 3: 4.0, 4: 6.0} and coupled.kernel_choices == (7,)
    rng = _rng(0)
    seen = set()
    for _ in range(3000):
        config = coupled.sample(rng)
        for stage in config.stages:
            assert set(stage.kernels) == {7}
            assert set(stage.expands) == {coupled.depth_expand_coupling[stage.depth]}
        seen.add(config.subnet_id)
    assert len(seen) == 3**5 == 243  # one choice per stage: the depth
    assert coupled.smallest() == SPACE.restricted(kernels=[7]).smallest()
    assert coupled.largest() == SPACE.largest()


def test_compofa_two_phase_schedule_from_the_teacher():
    compofa = build_method(CompOFAConfig(teacher_epochs=180), SPACE)
    teacher, phase1, phase2 = compofa.stages()
    assert (teacher.name, teacher.epochs, teacher.teacher) == ("teacher", 180, None)
    assert (phase1.name, phase1.epochs, phase1.lr, phase1.warmup_epochs) == ("phase1", 25, 0.01, 0)
    assert (phase2.name, phase2.epochs, phase2.lr, phase2.warmup_epochs) == ("phase2", 125, 0.03, 5)
    assert phase1.space.depth_choices == (3, 4) and phase2.space.depth_choices == (2, 3, 4)
    assert phase1.teacher == phase2.teacher == "teacher" and compofa.epochs == 330  # Table 2's 330
    assert phase1.subnets_per_step == phase2.subnets_per_step == 4
    for s in compofa.steps(phase1.first_epoch, 0, 10, _rng()):
        assert s.config.depths[0] in (3, 4) and s.target is Target.LABELS_AND_KD
        assert set(s.config.stages[0].expands) == {compofa.search_space.depth_expand_coupling[s.config.depths[0]]}
    with pytest.raises(ValueError, match="couples depth and expand ratio one to one"):
        build_method(CompOFAConfig(), mobilenetv3_space(0.35, expand_choices=(3, 6)))


# --- RSS -----------------------------------------------------------------------------------------


def _epoch_order(selection: str, epochs: int = 6) -> list[str]:
    rss = build_method(RSSConfig(epochs=epochs, selection=selection), SPACE, seed=3)
    names = {SPACE.smallest(): "min", SPACE.middle(): "mid", SPACE.largest(): "max"}
    order = []
    for epoch in range(epochs):
        per_step = [tuple(s.config for s in rss.steps(epoch, step, 5, _rng(step))) for step in range(5)]
        assert len(set(per_step)) == 1  # the same subnet for the whole epoch
        (config,) = per_step[0]
        order.append(names.get(config, "other"))
    return order


@pytest.mark.parametrize(
    "selection,order",
    [
        ("smallest", ["min"] * 6),
        ("middle", ["mid"] * 6),
        ("largest", ["max"] * 6),
        ("max_then_min", ["max"] * 3 + ["min"] * 3),
        ("min_then_max", ["min"] * 3 + ["max"] * 3),
        ("alternating", ["max", "min"] * 3),
    ],
)
def test_rss_selection_schemes_train_their_subnet_in_their_epoch_order(selection, order):
    assert _epoch_order(selection) == order
    rss = build_method(RSSConfig(epochs=6, selection=selection), SPACE)
    assert [rss.phase(e) for e in range(6)] == [
        {"mid": "middle", "min": "min", "max": "max"}[o]
        if selection in ("max_then_min", "min_then_max", "alternating")
        else selection
        for o in order
    ]
    (step,) = rss.steps(0, 0, 5, _rng())
    assert step.target is Target.LABELS and step.grad_weight == 1.0 and step.dropout


def test_rss_middle_subnet_takes_the_median_choices():
    middle = SPACE.middle()
    assert middle.depths == (3,) * 5
    assert {k for s in middle.stages for k in s.kernels} == {5} and {e for s in middle.stages for e in s.expands} == {
        4.0
    }


def test_rss_random_draws_one_subnet_per_epoch_the_same_on_every_rank_and_resume():
    rss = build_method(RSSConfig(epochs=20), SPACE, seed=7)
    per_epoch = [rss.steps(e, 0, 5, _rng(e))[0].config for e in range(20)]
    assert len(set(per_epoch)) > 15  # a new draw every epoch
    for epoch in (0, 13):
        steps = {rss.steps(epoch, step, 5, _rng(100 + step))[0].config for step in range(5)}
        assert steps == {per_epoch[epoch]}  # independent of the per-step rng
    again = build_method(RSSConfig(epochs=20), SPACE, seed=7)
    assert [again.steps(e, 3, 5, _rng())[0].config for e in range(20)] == per_epoch
    other_seed = build_method(RSSConfig(epochs=20), SPACE, seed=8)
    assert [other_seed.steps(e, 0, 5, _rng())[0].config for e in range(20)] != per_epoch


def test_rss_per_batch_sampling_and_two_subnets_with_summed_gradients(tmp_path):
    per_batch = build_method(RSSConfig(epochs=4, sampling="per_batch"), SPACE)
    configs = [per_batch.steps(0, step, 10, random.Random(step))[0].config for step in range(10)]
    assert len(set(configs)) > 5
    two = build_method(RSSConfig(epochs=4, sampling="per_batch", subnets_per_step=2), SPACE)
    steps = two.steps(0, 0, 10, _rng(1))
    assert len(steps) == 2 and all(s.grad_weight == 1.0 and s.target is Target.LABELS for s in steps)
    assert steps[0].config != steps[1].config
    assert RSSConfig(sampling="per_batch", subnets_per_step=2).run_label() == "rss-random-per-batch-x2"

    # Summed gradients: the accumulated gradient is the sum of each subnet's own gradient.
    spec = _tiny_spec(tmp_path, {"name": "rss", "epochs": 2})
    space = build_space(spec)
    torch.manual_seed(0)
    net = build_supernet(spec, space, 10)
    net.eval()  # BN in eval mode and no dropout, so three forward passes see the same function
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    steps = [s.__class__(s.config, s.target, s.grad_weight, dropout=False) for s in steps]
    grads = []
    for subset in ([steps[0]], [steps[1]], steps):
        net.zero_grad()
        run_step(net, subset, images, labels, 0.0, KLDivergence())
        grads.append(
            torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in net.parameters()])
        )
    assert torch.allclose(grads[2], grads[0] + grads[1], atol=1e-6)
    with pytest.raises(ValidationError, match="trains one fixed subnet per epoch"):
        RSSConfig(selection="alternating", sampling="per_batch")


# --- Every method ----------------------------------------------------------------------------------


def test_every_distilling_method_can_choose_its_divergence(tmp_path):
    alpha = {"name": "alpha_divergence", "alpha_min": -1, "alpha_max": 1, "clip": 5}
    for name in ("deps", "ofa", "bignas", "compofa"):
        spec = _tiny_spec(tmp_path, {"name": name, "teacher_divergence": alpha, "kd_temperature": 2.0})
        loss = build_distillation(build_method(spec.method, build_space(spec)).distillation())
        assert isinstance(loss, AdaptiveAlphaDivergence) and loss.temperature == 2.0
        default = build_method(_tiny_spec(tmp_path, {"name": name}).method, SPACE).distillation()
        assert isinstance(build_distillation(default), KLDivergence)
    with pytest.raises(Exception, match="teacher_divergence"):
        _tiny_spec(tmp_path, {"name": "rss", "teacher_divergence": "kl"})  # RSS does not distil


def test_every_method_steps_are_deterministic_and_inside_its_space():
    configs = {
        "deps": {"epochs": 6},
        "ofa": {"teacher_epochs": 2},
        "bignas": {"epochs": 6},
        "compofa": {"teacher_epochs": 2},
        "rss": {"epochs": 6},
    }
    assert set(configs) == set(METHODS)
    for name, settings in configs.items():
        method = build_method(METHODS[name].config_model(**settings), SPACE, seed=1)
        for epoch, step in itertools.product(range(min(method.epochs, 12)), range(3)):
            a = method.steps(epoch, step, 3, _rng(step))
            b = method.steps(epoch, step, 3, _rng(step))
            assert [s.config for s in a] == [s.config for s in b] and a
            for s in a:
                method.stage_of(epoch).space.validate(s.config)
                method.search_space.validate(s.config)
