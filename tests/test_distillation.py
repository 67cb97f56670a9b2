"""Distillation losses against their closed forms on random distributions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.distillation import (
    AdaptiveAlphaDivergence,
    KLDivergence,
    alpha_divergence,
    build_distillation,
    clipped_surrogate,
)
from workers.distillation_spec import AlphaDivergenceConfig, Distillation, KLConfig


@pytest.fixture(autouse=True)
def _float64():
    """Closed-form comparisons in double precision, restored afterwards so other test modules keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_logits(seed: int, rows: int = 16, classes: int = 10, spread: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * spread


def _closed_form(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """D_α(p‖q) = 1/(α(α−1)) Σ_i q_i[(p_i/q_i)^α − 1], straight from AlphaNet's Eqn. 3."""
    return np.array([sum(qi * ((pi / qi) ** alpha - 1.0) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]) / (
        alpha * (alpha - 1.0)
    )


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q)).sum(axis=1)


@pytest.mark.parametrize("alpha", [-2.0, -1.0, -0.5, 0.3, 0.5, 1.5, 2.0])
def test_alpha_divergence_value_is_the_closed_form(alpha):
    teacher, student = _random_logits(0), _random_logits(1)
    p, q = F.softmax(teacher, 1), F.softmax(student, 1)
    got = alpha_divergence(p.log(), q.log(), alpha).numpy()
    assert got == pytest.approx(_closed_form(p.numpy(), q.numpy(), alpha), rel=1e-9)
    assert (got >= -1e-12).all()  # a divergence


def test_alpha_limits_are_kl_and_reverse_kl():
    p, q = F.softmax(_random_logits(2), 1), F.softmax(_random_logits(3), 1)
    kl, reverse = _kl(p.numpy(), q.numpy()), _kl(q.numpy(), p.numpy())
    for eps in (1e-3, 1e-5):
        assert _closed_form(p.numpy(), q.numpy(), 1.0 + eps) == pytest.approx(kl, rel=1e-2)
        assert _closed_form(p.numpy(), q.numpy(), eps) == pytest.approx(reverse, rel=1e-2)
    assert alpha_divergence(p.log(), q.log(), 1.0).numpy() == pytest.approx(kl, rel=1e-12)
    assert alpha_divergence(p.log(), q.log(), 0.0).numpy() == pytest.approx(reverse, rel=1e-12)
    near = alpha_divergence(p.log(), q.log(), 1.0 + 1e-4).numpy()
    assert near == pytest.approx(kl, rel=1e-3)


@pytest.mark.parametrize("alpha,clip", [(-1.0, 5.0), (1.0, 5.0), (0.5, 2.0), (2.0, 1.5), (-2.0, 1e9)])
def test_surrogate_gradient_is_the_clipped_alphanet_gradient(alpha, clip):
    """∇ surrogate = −(1/α)·E_q[min((p/q)^α, β)·∇log q], by autograd, with ∇ w.r.t. the student's logits."""
    teacher = _random_logits(4)
    student = _random_logits(5).requires_grad_(True)
    log_p, log_q = F.log_softmax(teacher, 1), F.log_softmax(student, 1)
    clipped_surrogate(log_p, log_q, alpha, clip).sum().backward()

    p, q = log_p.exp(), log_q.detach().exp()
    expected = torch.zeros_like(student)
    for row in range(student.size(0)):
        # ∇_z log q_i = e_i − q for a softmax over logits z; the expectation is over i ~ q.
        for i in range(student.size(1)):
            weight = min(float((p[row, i] / q[row, i]) ** alpha), clip)
            grad_log_qi = -q[row].clone()
            grad_log_qi[i] += 1.0
            expected[row] += -(1.0 / alpha) * q[row, i] * weight * grad_log_qi
    assert student.grad.numpy() == pytest.approx(expected.numpy(), rel=1e-9, abs=1e-12)


def test_unclipped_surrogate_gradient_equals_the_true_divergence_gradient():
    teacher = _random_logits(6, spread=1.0)
    for alpha in (-1.0, 0.5, 1.0, 2.0):
        a = _random_logits(7, spread=1.0).requires_grad_(True)
        b = a.detach().clone().requires_grad_(True)
        log_p = F.log_softmax(teacher, 1)
        clipped_surrogate(log_p, F.log_softmax(a, 1), alpha, clip=1e12).sum().backward()
        alpha_divergence(log_p, F.log_softmax(b, 1), alpha).sum().backward()
        assert a.grad.numpy() == pytest.approx(b.grad.numpy(), rel=1e-8, abs=1e-12)


def test_adaptive_loss_logs_the_true_max_divergence_and_follows_the_larger_one():
    teacher, student = _random_logits(8), _random_logits(9).requires_grad_(True)
    loss = AdaptiveAlphaDivergence(alpha_min=-1.0, alpha_max=1.0, clip=5.0)
    objective, value = loss(student, teacher)
    p, q = F.softmax(teacher, 1).numpy(), F.softmax(student.detach(), 1).numpy()
    d_minus, d_plus = _closed_form(p, q, -1.0), _kl(p, q)
    assert value.item() == pytest.approx(np.maximum(d_minus, d_plus).mean(), rel=1e-9)
    assert not value.requires_grad and objective.requires_grad
    assert objective.item() != pytest.approx(value.item())  # the surrogate is not what is logged
    assert (d_minus > d_plus).any() and (d_plus > d_minus).any()  # both branches are exercised here

    objective.backward()
    log_p = F.log_softmax(teacher, 1)
    expected = student.detach().clone().requires_grad_(True)
    log_q = F.log_softmax(expected, 1)
    per_row = torch.where(
        torch.tensor(d_plus >= d_minus),
        clipped_surrogate(log_p, log_q, 1.0, 5.0),
        clipped_surrogate(log_p, log_q, -1.0, 5.0),
    )
    per_row.mean().backward()
    assert student.grad.numpy() == pytest.approx(expected.grad.numpy(), rel=1e-12)


def test_kl_loss_with_temperature_is_scaled_kl_of_softened_distributions():
    teacher, student = _random_logits(10), _random_logits(11).requires_grad_(True)
    objective, value = KLDivergence(temperature=4.0)(student, teacher)
    p, q = F.softmax(teacher / 4, 1).numpy(), F.softmax(student.detach() / 4, 1).numpy()
    assert value.item() == pytest.approx(16.0 * _kl(p, q).mean(), rel=1e-9)
    assert objective.item() == pytest.approx(value.item())
    reference = F.kl_div(
        F.log_softmax(student / 4, 1), F.log_softmax(teacher / 4, 1), reduction="batchmean", log_target=True
    )
    assert objective.item() == pytest.approx(16.0 * reference.item(), rel=1e-9)


def test_teacher_gets_no_gradient_and_config_builds_the_loss():
    teacher = _random_logits(12).requires_grad_(True)
    student = _random_logits(13).requires_grad_(True)
    objective, _ = build_distillation(Distillation(AlphaDivergenceConfig(), 1.0))(student, teacher)
    objective.backward()
    assert teacher.grad is None and student.grad is not None
    assert isinstance(build_distillation(Distillation(KLConfig(), 2.0)), KLDivergence)
    assert AlphaDivergenceConfig().model_dump() == {
        "name": "alpha_divergence",
        "alpha_min": -1.0,
        "alpha_max": 1.0,
        "clip": 5.0,
    }
    with pytest.raises(ValueError, match="alpha_min 2.0 is above alpha_max 1.0"):
        AlphaDivergenceConfig(alpha_min=2.0)
