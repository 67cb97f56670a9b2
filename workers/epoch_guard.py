"""The training loop's stop checks: before training, at each epoch end, and before each step with a budget.

At an epoch end (after its checkpoint and ledger row) the run stops for a cancel
request, or when the ledger plus the cautious estimate of the next epoch would
pass the budget. That estimate is a forecast: an epoch can still run longer than
any before it (a busy node, a slow file system). So with a budget, rank 0 also
checks before every step that the ledger, the epoch so far and a reserve for the
next step with the epoch's checkpoint still fit; if not, the run stops at once
and the epoch in flight is charged as lost work. The budget is then a cap, not a
forecast, as long as no step outruns its reserve (see `STEP_MARGIN`).

Rank 0 decides and broadcasts the decision, so every rank stops at the same point.
Durations come from an injected clock (`time.monotonic` by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from workers.job import WorkerSpec
from workers.methods import TrainingMethod
from workers.rundir.budget import STEP_MARGIN, budget_verdict, check_epoch
from workers.rundir.estimator import EpochCostEstimator, ledger_rows, ledger_spend
from workers.rundir.forecast import load_forecast
from workers.rundir.pricing import Usage
from workers.rundir.state import RunState
from workers.rundir.stops import StopRecord, cancel_request, record_stop

Clock = Callable[[], float]


class EpochGuard:
    """One training job's stop checks, on every rank."""

    def __init__(
        self,
        spec: WorkerSpec,
        run_dir: Path,
        method: TrainingMethod,
        rank: int,
        device: torch.device,
        steps_per_epoch: int,
        devices: int,
        price_per_device_hour: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.spec, self.run_dir, self.method, self.rank, self.device = spec, run_dir, method, rank, device
        self.steps_per_epoch, self.devices, self.price = steps_per_epoch, devices, price_per_device_hour
        self.clock = clock
        self.stopped_mid_epoch = False
        # Rank 0's view of the epoch in flight (only with a budget).
        self._epoch, self._phase, self._charged_from = 0, "", 0.0
        self._spent = Usage()
        self._last_step_at: float | None = None
        self._last_step = 0
        self._steps_end: float | None = None
        self._step_seconds: dict[str, float] = {}  # the slowest step seen per phase in this job
        self._tail_seconds: float | None = None  # the slowest all-reduce + checkpoint + ledger write seen
        self._planned_step: float | None = None
        self._first_step: float | None = None  # the forecast's first step of a job, scaled as the epochs ran
        self._planned_tail: float | None = None

    def before_training(self, epoch: int, charged_from: float) -> bool:
        """Whether the budget stops the job before its first epoch, `epoch` (the same answer on every rank).

        What the job spent since `charged_from` (its set-up, a forecast measured in it) is not in the
        ledger yet; a stop charges it as lost work.
        """
        record = None
        if self.rank == 0 and self.spec.budget.limited:
            in_flight = Usage.of(self.clock() - charged_from, self.devices, self.price)
            phase = self.method.phase(epoch)
            verdict = check_epoch(self.spec.budget, self.run_dir, epoch, phase, new_job=False, in_flight=in_flight)
            if verdict is not None:
                record = StopRecord(RunState.BUDGET_EXHAUSTED, verdict, epoch - 1)
                record_stop(self.run_dir, record)
                print(f"[{self.spec.run}] stopping before epoch {epoch + 1}: {record.reason}", flush=True)
        self.stopped_mid_epoch = self._broadcast(record is not None)
        return self.stopped_mid_epoch

    def begin_epoch(self, epoch: int, charged_from: float) -> None:
        """Epoch `epoch` starts; stopped midway, it is charged as lost work from `charged_from` (set-up included)."""
        if not self.spec.budget.limited:
            return
        self._epoch, self._phase, self._charged_from = epoch, self.method.phase(epoch), charged_from
        self._last_step_at = None
        if self.rank == 0:
            epochs, subnets, lost = ledger_rows(self.run_dir)
            self._spent = ledger_spend(epochs, subnets, lost)
            forecast = load_forecast(self.run_dir)
            estimator = EpochCostEstimator(forecast, epochs)
            planned = estimator.epoch_seconds(self._phase, cautious=True)
            self._planned_step = planned / self.steps_per_epoch if planned else None
            if forecast is not None:
                self._first_step = forecast.first_step_seconds * (estimator.ratio or 1.0)
                self._planned_tail = forecast.epoch_fixed_seconds

    def before_step(self, step: int) -> bool:
        """Whether to stop before `step` of the epoch in flight, losing it (the same answer on every rank).

        Only every `budget.check_every_steps`-th step is checked (and broadcast); the check reserves room for
        the steps until the next one. The others pass without a word between the ranks.
        """
        if not self.spec.budget.limited or step % self.spec.budget.check_every_steps != 0:
            return False
        record = self._decide_step(step) if self.rank == 0 else None
        if record is not None:
            record_stop(self.run_dir, record)
            print(f"[{self.spec.run}] stopping in epoch {self._epoch + 1}: {record.reason}", flush=True)
        self.stopped_mid_epoch = self._broadcast(record is not None)
        return self.stopped_mid_epoch

    def steps_finished(self) -> None:
        self._steps_end = self.clock()

    def after_epoch(self, epoch: int, job_end: int) -> bool:
        """Whether to stop after `epoch` (the same answer on every rank). `job_end`: this training job's end epoch."""
        if self._steps_end is not None:
            tail = self.clock() - self._steps_end
            self._tail_seconds = max(self._tail_seconds or 0.0, tail)
            self._steps_end = None
        record = self._decide(epoch, job_end) if self.rank == 0 else None
        if record is not None:
            record_stop(self.run_dir, record)
            print(f"[{self.spec.run}] stopping after epoch {epoch + 1}: {record.reason}", flush=True)
        return self._broadcast(record is not None)

    def _decide(self, epoch: int, job_end: int) -> StopRecord | None:
        following = epoch + 1
        if following >= self.method.epochs:
            return None  # training is done; the controller checks before evaluating
        reason = cancel_request(self.run_dir)
        if reason is not None:
            return StopRecord(RunState.CANCELLED, reason, epoch)
        verdict = check_epoch(
            self.spec.budget, self.run_dir, following, self.method.phase(following), new_job=following >= job_end
        )
        return StopRecord(RunState.BUDGET_EXHAUSTED, verdict, epoch) if verdict is not None else None

    def _decide_step(self, step: int) -> StopRecord | None:
        now = self.clock()
        if self._last_step_at is not None:  # the mean step since the last check: the steps between are not timed
            seconds = (now - self._last_step_at) / (step - self._last_step)
            self._step_seconds[self._phase] = max(self._step_seconds.get(self._phase, 0.0), seconds)
        self._last_step_at, self._last_step = now, step
        in_flight = Usage.of(now - self._charged_from, self.devices, self.price)
        steps = min(self.spec.budget.check_every_steps, self.steps_per_epoch - step)  # until the next check
        coming = Usage.of(self._reserve(steps), self.devices, self.price)
        last = f"-{step + steps}" if steps > 1 else ""
        what = (
            f"step {step + 1}{last}/{self.steps_per_epoch} of epoch {self._epoch + 1} ({self._phase}) "
            "and its checkpoint"
        )
        verdict = budget_verdict(self.spec.budget, self._spent + in_flight, coming, what)
        if verdict is None:
            return None
        reason = f"{verdict}; epoch {self._epoch + 1} is charged as lost work"
        return StopRecord(RunState.BUDGET_EXHAUSTED, reason, self._epoch - 1)

    def _reserve(self, steps: int = 1) -> float:
        """Seconds to keep for the next `steps` steps and the epoch's tail (all-reduce, checkpoint, ledger row)."""
        step = max(self._step_seconds.get(self._phase, 0.0), self._planned_step or 0.0) or max(
            self._step_seconds.values(), default=0.0
        )
        if not self._step_seconds:  # the job's first step
            step = max(step, self._first_step or 0.0)
        tail = max(self._tail_seconds or 0.0, self._planned_tail or 0.0) or step
        return STEP_MARGIN * step * steps + tail

    def _broadcast(self, stop: bool) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return stop
        flag = torch.tensor([1 if stop else 0], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.to(self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())
