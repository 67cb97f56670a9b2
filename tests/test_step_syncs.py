"""The training step never waits for the host: no `.item()`, `.cpu()` or broadcast in a step, budget or not,
except at the budget's in-epoch checks (every `budget.check_every_steps`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from orchestrator.plan import make_plan
from orchestrator.spec_file import load_spec
from tests.conftest import one_thread_float32
from workers.epoch_guard import EpochGuard
from workers.training_loop import train_step
from workers.worker_setup import set_up_worker


@pytest.fixture
def process_group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _counting(monkeypatch: pytest.MonkeyPatch) -> Counter:
    calls: Counter = Counter()

    def counted(name: str, original):
        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return call

    for name in ("item", "cpu", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(dist, "broadcast", counted("broadcast", dist.broadcast))
    return calls


def test_a_step_syncs_with_the_host_only_at_the_budgets_checks(tiny_spec, process_group, monkeypatch):
    spec = load_spec(tiny_spec("syncs", budget={"max_dollars": 100.0, "check_every_steps": 4}))
    plan = make_plan(spec)
    plan.run_dir.mkdir(parents=True)
    with one_thread_float32():
        setup = set_up_worker(plan.work, 0, 1, torch.device("cpu"))
        guard = EpochGuard(plan.work, plan.run_dir, setup.method, 0, setup.device, setup.steps_per_epoch, 2, 0.04)
        shrinking = setup.method.stages()[0].first_epoch + 2  # DepS: epoch 2 is a sandwich of 3 subnets
        guard.begin_epoch(shrinking, charged_from=0.0)
        batches = iter(setup.loader)
        calls = _counting(monkeypatch)
        syncs_by_step = []
        for step in range(8):
            images, labels = next(batches)
            before = sum(calls.values())
            assert guard.before_step(step) is False
            losses = train_step(setup, shrinking, step, images, labels, lr=0.01)
            syncs_by_step.append(sum(calls.values()) - before)
        monkeypatch.undo()
    # Steps 0 and 4 are the budget's checks: one broadcast of the decision and its one read each, and nothing
    # else in any step (the data loader's own shuffle, outside the steps, is not the step's).
    assert syncs_by_step == [2, 0, 0, 0, 2, 0, 0, 0]
    assert calls["broadcast"] == 2 and calls["item"] == 2
    assert losses.others == 2 and torch.isfinite(losses.first)  # the losses stay on the device, unread
