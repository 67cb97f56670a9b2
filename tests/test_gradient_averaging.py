"""One gradient reduction per optimiser step, whatever the subnets of a sandwich step: two real gloo processes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.distillation import KLDivergence
from workers.methods import SubnetStep, Target
from workers.step import GradientAverager, run_step
from workers.supernet.space import mobilenetv3_space
from workers.supernet.supernet import ElasticSupernet

SPACE = mobilenetv3_space(0.35, cifar=True, resolution=16)


def _net() -> ElasticSupernet:
    torch.manual_seed(0)
    net = ElasticSupernet(SPACE, 10, dropout=0.0, bn_momentum=0.1)
    return net.eval()  # BN by its running statistics: every image's gradient is its own, on any rank


def _steps() -> list[SubnetStep]:
    """A sandwich step: the largest (labels, the in-place teacher), a random subnet, the smallest last."""
    middle = SPACE.sample(random.Random(3))
    return [
        SubnetStep(SPACE.largest(), Target.LABELS, 1.0, dropout=False, is_teacher=True),
        SubnetStep(middle, Target.INPLACE_KD, 0.5, dropout=False),
        SubnetStep(SPACE.smallest(), Target.INPLACE_KD, 0.5, dropout=False),
    ]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in net.named_parameters()}


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    reductions = []
    all_reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        reductions.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        net = _net()
        images, labels = _batch()
        mine = slice(rank * 8, (rank + 1) * 8)
        averager = GradientAverager(net.parameters(), world)
        run_step(net, _steps(), images[mine], labels[mine], 0.1, KLDivergence())
        averager()
        torch.save({"grads": _grads(net), "reductions": reductions, "buckets": len(averager.buckets)}, out)
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


def _spawned(rank: int, world: int, tmp: str) -> None:
    _rank(rank, world, os.path.join(tmp, "init"), os.path.join(tmp, f"rank{rank}.pt"))


def test_one_sandwich_step_on_two_ranks_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_spawned, args=(2, str(tmp_path)), nprocs=2, join=True)
    net = _net()
    images, labels = _batch()
    run_step(net, _steps(), images, labels, 0.1, KLDivergence())
    single = _grads(net)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        # Exactly one reduction per bucket for the whole step, however many subnets it trained.
        assert len(result["reductions"]) == result["buckets"] >= 1
        assert sum(result["reductions"]) == sum(p.numel() for p in net.parameters())
        for name, expected in single.items():
            got = result["grads"][name]
            if expected is None:  # no subnet of the step used it: left without a gradient, on every rank
                assert got is None, name
                continue
            scale = expected.abs().max().item() or 1.0
            assert (got - expected).abs().max().item() <= 1e-5 * scale, name
