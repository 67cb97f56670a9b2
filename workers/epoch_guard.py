"""The training loop's stop checks: before training, at each epoch end, and before each step with a budget.

At an epoch end (after its checkpoint and ledger row) the run stops for a cancel
request, or when the ledger plus the cautious estimate of the next epoch would
pass the budget. That estimate is a forecast: an epoch can still run longer than
any before it (a busy node, a slow file system). So with a budget, rank 0 also
checks before every step that the ledger, the epoch so far and a reserve for the
next step with the epoch's checkpoint still fit; if not, the run stops at once
and the epoch in flight is charged as lost work. The budget is then a cap, not a
forecast, as long as no step outruns its reserve (see `STEP_MARGIN`).

Under a time limit (`workers/rundir/time_limit.py`) the same checks look at the
allocation's end: at an epoch end the run stops if the next epoch (its slowest
step seen, or the forecast's, times the epoch's steps, and its tail) would not
finish before the end less a margin; between steps, when the end comes closer
than the steps until the next check and a checkpoint, the run stops and saves a
step checkpoint (`save_step`), which the requeued job resumes from that step.

Rank 0 decides and broadcasts the decision, so every rank stops at the same point.
Durations come from an injected clock (`time.monotonic` by default), the time of
day from another (`time.time`): an allocation ends at a time of day.
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
from workers.rundir.time_limit import TimeLimit, clock_time

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
        time_limit: TimeLimit | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.spec, self.run_dir, self.method, self.rank, self.device = spec, run_dir, method, rank, device
        self.steps_per_epoch, self.devices, self.price = steps_per_epoch, devices, price_per_device_hour
        self.clock, self.wall_clock, self.time_limit = clock, wall_clock, time_limit
        self.stopped_mid_epoch = False
        self.save_step = False  # the stop in flight keeps the epoch so far in a step checkpoint
        # Steps are timed (and checked) only where something can stop an epoch midway.
        self._checks_steps = spec.budget.limited or time_limit is not None
        self._planned_steps: dict[str, float] = {}  # the forecast's step per phase, scaled as the epochs ran
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
        if not self._checks_steps:
            return
        self._epoch, self._phase, self._charged_from = epoch, self.method.phase(epoch), charged_from
        self._last_step_at = None
        if self.rank == 0:
            epochs, subnets, lost = ledger_rows(self.run_dir)
            self._spent = ledger_spend(epochs, subnets, lost)
            forecast = load_forecast(self.run_dir)
            estimator = EpochCostEstimator(forecast, epochs)
            self._planned_step = self._planned_step_of(estimator, self._phase)
            if forecast is not None:
                self._first_step = forecast.first_step_seconds * (estimator.ratio or 1.0)
                self._planned_tail = forecast.epoch_fixed_seconds
                self._planned_steps = {
                    p.phase: step for p in forecast.phases if (step := self._planned_step_of(estimator, p.phase))
                }

    def _planned_step_of(self, estimator: EpochCostEstimator, phase: str) -> float | None:
        planned = estimator.epoch_seconds(phase, cautious=True)
        return planned / self.steps_per_epoch if planned else None

    def before_step(self, step: int) -> bool:
        """Whether to stop before `step` of the epoch in flight, losing it (the same answer on every rank).

        Only every `budget.check_every_steps`-th step is checked (and broadcast); the check reserves room for
        the steps until the next one. The others pass without a word between the ranks.
        """
        if not self._checks_steps or step % self.spec.budget.check_every_steps != 0:
            return False
        record = self._decide_step(step) if self.rank == 0 else None
        if record is not None:
            record_stop(self.run_dir, record)
            print(f"[{self.spec.run}] stopping in epoch {self._epoch + 1}: {record.reason}", flush=True)
        code = 0 if record is None else 2 if record.state is RunState.TIME_LIMIT else 1
        code = self._broadcast_code(code)
        self.stopped_mid_epoch, self.save_step = code > 0, code == 2
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
        if verdict is not None:
            return StopRecord(RunState.BUDGET_EXHAUSTED, verdict, epoch)
        return self._time_limit_at_epoch_end(following)

    def _time_limit_at_epoch_end(self, following: int) -> StopRecord | None:
        end = self.time_limit.end(self.run_dir) if self.time_limit is not None else None
        if end is None:
            return None
        phase = self.method.phase(following)
        step = self._step_seconds.get(phase) or self._planned_steps.get(phase) or self._slowest_step()
        seconds = (self.steps_per_epoch + STEP_MARGIN - 1) * step + self._tail()
        if self.wall_clock() + seconds + self.time_limit.margin_seconds <= end:
            return None
        reason = (
            f"time limit: epoch {following + 1} ({phase}, about {seconds:.0f}s) would not finish before the "
            f"allocation ends at {clock_time(end)}"
        )
        return StopRecord(RunState.TIME_LIMIT, reason, following - 1)

    def _decide_step(self, step: int) -> StopRecord | None:
        now = self.clock()
        if self._last_step_at is not None:  # the mean step since the last check: the steps between are not timed
            seconds = (now - self._last_step_at) / (step - self._last_step)
            self._step_seconds[self._phase] = max(self._step_seconds.get(self._phase, 0.0), seconds)
        self._last_step_at, self._last_step = now, step
        steps = min(self.spec.budget.check_every_steps, self.steps_per_epoch - step)  # until the next check
        last = f"-{step + steps}" if steps > 1 else ""
        what = f"step {step + 1}{last}/{self.steps_per_epoch} of epoch {self._epoch + 1} ({self._phase})"
        reserve = self._reserve(steps)
        if self.spec.budget.limited:
            in_flight = Usage.of(now - self._charged_from, self.devices, self.price)
            coming = Usage.of(reserve, self.devices, self.price)
            verdict = budget_verdict(self.spec.budget, self._spent + in_flight, coming, f"{what} and its checkpoint")
            if verdict is not None:
                reason = f"{verdict}; epoch {self._epoch + 1} is charged as lost work"
                return StopRecord(RunState.BUDGET_EXHAUSTED, reason, self._epoch - 1)
        end = self.time_limit.end(self.run_dir) if self.time_limit is not None else None
        if end is None or self.wall_clock() + reserve + self.time_limit.margin_seconds <= end:
            return None
        reason = (
            f"time limit: {what} and a checkpoint would not finish before the allocation ends at "
            f"{clock_time(end)}; the epoch so far is kept in a step checkpoint"
        )
        return StopRecord(RunState.TIME_LIMIT, reason, self._epoch - 1)

    def _slowest_step(self) -> float:
        return max([*self._step_seconds.values(), self._planned_step or 0.0, self._first_step or 0.0])

    def _tail(self) -> float:
        """The epoch's tail (all-reduce, checkpoint, ledger row): the slowest seen, or the forecast's."""
        return max(self._tail_seconds or 0.0, self._planned_tail or 0.0)

    def _reserve(self, steps: int = 1) -> float:
        """Seconds to keep for the next `steps` steps and the epoch's tail (all-reduce, checkpoint, ledger row)."""
        step = max(self._step_seconds.get(self._phase, 0.0), self._planned_step or 0.0) or max(
            self._step_seconds.values(), default=0.0
        )
        if not self._step_seconds:  # the job's first step
            step = max(step, self._first_step or 0.0)
        tail = self._tail() or step
        return STEP_MARGIN * step * steps + tail

    def _broadcast(self, stop: bool) -> bool:
        return self._broadcast_code(1 if stop else 0) > 0

    def _broadcast_code(self, code: int) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return code
        flag = torch.tensor([code], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.to(self.device)
        dist.broadcast(flag, src=0)
        return int(flag.item())
