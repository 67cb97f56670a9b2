"""Mixed precision on the CPU: bf16 autocast trains like fp32, ε-scaled gradients survive, weights stay fp32."""

from __future__ import annotations

import random

import pytest
import torch

from orchestrator.cli import main
from tests.conftest import one_thread_float32
from workers.distillation import KLDivergence
from workers.methods import SubnetStep, Target
from workers.precision import MixedPrecision
from workers.step import run_step
from workers.supernet.space import mobilenetv3_space
from workers.supernet.supernet import ElasticSupernet

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)


def _sandwich(epsilon: float) -> list[SubnetStep]:
    return [
        SubnetStep(SPACE.largest(), Target.LABELS, 1.0, dropout=False, is_teacher=True),
        SubnetStep(SPACE.sample(random.Random(2)), Target.INPLACE_KD, epsilon, dropout=False),
        SubnetStep(SPACE.smallest(), Target.INPLACE_KD, epsilon, dropout=False),
    ]


def _train(precision: str, steps: int = 4) -> tuple[list[float], ElasticSupernet]:
    torch.manual_seed(0)
    net = ElasticSupernet(SPACE, 10, dropout=0.0, bn_momentum=0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    mixed = MixedPrecision(precision, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(32, 3, 16, 16, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        losses.append(run_step(net, _sandwich(1.0), images, labels, 0.1, KLDivergence(), None, mixed).first.item())
        mixed.step(optimizer, net.parameters(), None)
    return losses, net


def test_bf16_trains_like_fp32_and_keeps_fp32_weights():
    with one_thread_float32():
        full, _ = _train("fp32")
        half, net = _train("bf16")
    assert all(torch.isfinite(torch.tensor(half)))
    assert half[-1] == pytest.approx(full[-1], rel=0.05)  # after the same steps, within 5 %
    assert half[-1] < half[0]  # and it learns
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_an_epsilon_scaled_subnets_gradient_does_not_vanish(precision):
    with one_thread_float32():
        torch.manual_seed(0)
        net = ElasticSupernet(SPACE, 10, dropout=0.0, bn_momentum=0.1).eval()
        mixed = MixedPrecision(precision, torch.device("cpu"))
        images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        # The smallest subnet alone, its loss scaled by ε = 1e-4 as DepS scales it at the start of shrinking.
        student = SubnetStep(SPACE.smallest(), Target.LABELS, 1e-4, dropout=False)
        run_step(net, [student], images, labels, 0.1, KLDivergence(), None, mixed)
        if mixed.scaler is not None:
            mixed.scaler.unscale_(torch.optim.SGD(net.parameters(), lr=0.0))
        grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    # ε = 1e-4 did not underflow to zero: the gradient is the fp32 one's, to autocast's precision.
    with one_thread_float32():
        torch.manual_seed(0)
        reference = ElasticSupernet(SPACE, 10, dropout=0.0, bn_momentum=0.1).eval()
        run_step(reference, [student], images, labels, 0.1, KLDivergence())
    expected = torch.cat([p.grad.flatten() for p in reference.parameters() if p.grad is not None])
    got = torch.cat([g.flatten() for g in grads])
    assert got.abs().sum() > 0 and torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.99


def test_an_unknown_precision_is_one_line(tiny_spec, capsys):
    assert main(["submit", str(tiny_spec("p")), "--dry-run", "--no-forecast", "--set", "precision=fp8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision" in err and "fp8" in err, err
