"""The controller: runs one plan's stages in order, on a cluster it is handed, and keeps the run's state.

It knows nothing of any training method (the method travels inside the spec to
the workers) and nothing of any backend (the caller hands it the cluster to run
on). Every stage can be re-run: training resumes from Ray Train's last
checkpoint, evaluation skips subnets already written for that checkpoint.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.evaluation_job import run_evaluation
from orchestrator.plan import Plan
from orchestrator.profile_job import forecast_job
from orchestrator.run_monitor import RunMonitor, logged
from orchestrator.tracking import TrackedRun, log_new_epochs, open_tracker
from orchestrator.training_job import run_training
from workers.constraint import best_subnet
from workers.data.datasets import index_of
from workers.data.image_index import keep_index
from workers.forecast_model import ForecastJob
from workers.rundir.budget import check_epoch, check_evaluation
from workers.rundir.forecast import Forecast, load_forecast
from workers.rundir.state import RunState, begin_submission, read_state, write_state
from workers.rundir.stops import RunStopped, StopRecord, cancel_request, clear_stop
from workers.rundir.tables import RunStore


@dataclass(frozen=True)
class RunOutcome:
    state: RunState
    reason: str
    checkpoint: Path | None
    subnets_written: int


class RunFailed(Exception):
    """A stage failed; the message is one line, the traceback is in the run's controller.log."""


def record_plan(plan: Plan, described: dict | None = None) -> None:
    """plan.json: the plan's description (with its backend's part, where the caller has it)."""
    files = plan.files.create()
    files.write_json(files.plan, described if described is not None else plan.describe())
    files.write_json(files.worker_spec, plan.work.model_dump(mode="json"))
    index = index_of(plan.work.dataset)  # the run's own file if it has one, else the planner's scan
    if index is not None:
        keep_index(index, files.image_index)


def announce(plan: Plan, described: dict | None = None) -> None:
    """Write the run's plan and mark it PENDING (a finished run keeps its state until it runs again)."""
    running = read_state(plan.files)
    if running is not None and running.controller_alive():
        raise UserError(
            f"run {plan.spec.run} is already running (pid {running.pid} on {running.host}); "
            f"deps-orch cancel {plan.spec.run} stops it"
        )
    record_plan(plan, described)
    if not plan.files.state.exists():
        write_state(plan.files, RunState.PENDING)


def _last_epoch(plan: Plan) -> int:
    return max((r["epoch"] for r in RunStore(plan.files).epochs().select(["epoch"]).to_pylist()), default=-1)


def _steps_measured(measure: ForecastJob) -> str:
    request = measure.request
    if request.max_steps is None or request.max_steps <= request.steps:
        return f"{request.steps} steps"
    return f"{request.steps}-{request.max_steps} steps (until the median settles, at most {request.max_seconds:g}s)"


def check_before_training(plan: Plan) -> None:
    """Raise RunStopped if the budget cannot pay for the next epoch and the set-up of the job that trains it."""
    done = {r["epoch"] for r in RunStore(plan.files).epochs().select(["epoch"]).to_pylist()}
    coming = [(e, phase) for phase, first, last in plan.phases for e in range(first, last + 1) if e not in done]
    if not coming:
        return
    epoch, phase = min(coming)
    verdict = check_epoch(plan.spec.budget, plan.files, epoch, phase, new_job=True)
    if verdict is not None:
        raise RunStopped(StopRecord(RunState.BUDGET_EXHAUSTED, verdict, _last_epoch(plan)))


def describe_best(plan: Plan) -> str:
    """The most accurate subnet evaluated on the final checkpoint, under the constraint if there is one."""
    rows = RunStore(plan.files).subnets().to_pylist()
    last = max((r["checkpoint_epoch"] for r in rows), default=None)
    constraint = plan.spec.evaluation.constraint
    best = best_subnet([r for r in rows if r["checkpoint_epoch"] == last], constraint)
    under = f" under {constraint.describe()}" if constraint.limited else ""
    if best is None:
        return f"no evaluated subnet{under}"
    latency = f", {best['latency_ms']:.3g} ms" if best["latency_ms"] is not None else ""
    return (
        f"best subnet{under}: {best['subnet_id']}, top-1 {best['top1']:.2f}% at {best['macs'] / 1e6:.3g} MMACs"
        f"{latency} (deps-orch export {plan.spec.run} --best)"
    )


def stopped_as(plan: Plan, error: BaseException | None) -> RunState:
    """The state a run ends in when `error` (or nothing) leaves its stages, as `execute` will write it."""
    if error is None:
        return RunState.SUCCEEDED
    if isinstance(error, RunStopped):
        return error.record.state
    if isinstance(error, KeyboardInterrupt):
        return RunState.CANCELLED if cancel_request(plan.files) is not None else RunState.INTERRUPTED
    return RunState.FAILED


def check_before_evaluation(plan: Plan) -> None:
    """Raise RunStopped if a cancel was requested, or the budget cannot pay for the evaluation still to do."""
    reason = cancel_request(plan.files)
    if reason is not None:
        raise RunStopped(StopRecord(RunState.CANCELLED, f"{reason}, before evaluation", _last_epoch(plan)))
    forecast = load_forecast(plan.files)
    planned = forecast.eval_subnets if forecast is not None else len(plan.subnets)
    left = max(0, planned - len(RunStore(plan.files).subnets()))
    verdict = check_evaluation(plan.spec.budget, plan.files, left)
    if verdict is not None:
        raise RunStopped(StopRecord(RunState.BUDGET_EXHAUSTED, verdict, _last_epoch(plan)))


def execute(
    plan: Plan,
    cluster: AbstractContextManager,
    echo: Callable[[str], None] = print,
    hold: AbstractContextManager | None = None,
) -> RunOutcome:
    """Run the plan's stages on `cluster` (entered here, inside `hold`: the devices' held time); the run must
    have been announced. Its MLflow record is kept as it goes (`orchestrator/tracking.py`) and closed while the
    devices are still held (its plots take a moment, which the run pays for)."""
    tracker = open_tracker(plan)
    files = plan.files
    begin_submission(files)  # this process owns the run now; an old cancel or stop no longer applies
    clear_stop(files)
    echo = logged(files, echo)
    measure = forecast_job(plan) if plan.spec.forecast.measure else None
    state = RunState.PENDING
    transition = threading.Lock()  # the monitor's thread ends FORECASTING; this one makes every other change

    def forecast_measured(forecast: Forecast) -> None:
        nonlocal state
        echo(f"[{plan.spec.run}] {forecast.describe()}")
        with transition:
            if state is RunState.FORECASTING:
                state = RunState.TRAINING
                write_state(files, state)

    def enter(new: RunState) -> None:
        nonlocal state
        with transition:
            state = new
            write_state(files, state)

    monitor = RunMonitor(plan, echo, on_forecast=forecast_measured, on_epochs=lambda: log_new_epochs(tracker))
    try:
        with hold or nullcontext(), cluster, monitor, TrackedRun(tracker, stopped_as):
            alloc = plan.training
            if measure is not None:
                enter(RunState.FORECASTING)
                workers = plan.spec.cluster.num_workers
                echo(
                    f"[{plan.spec.run}] measuring the forecast: {_steps_measured(measure)} of each phase "
                    f"on {workers} workers, in the training job"
                )
            else:
                check_before_training(plan)
                enter(RunState.TRAINING)
            echo(f"[{plan.spec.run}] training {plan.method} on {alloc.devices} {alloc.price.device_type}")
            checkpoint = run_training(plan, echo, measure)
            check_before_evaluation(plan)
            enter(RunState.EVALUATING)
            echo(f"[{plan.spec.run}] evaluating {len(plan.subnets)} subnets, {plan.spec.evaluation.workers} workers")
            written = run_evaluation(plan, checkpoint, echo=echo)
            echo(f"[{plan.spec.run}] {describe_best(plan)}")
    except RunStopped as stopped:
        record = stopped.record
        write_state(files, record.state, record.reason)
        where = f"after epoch {record.epoch + 1}" if record.epoch >= 0 else "before any epoch was trained"
        echo(f"[{plan.spec.run}] {record.state.value} {where}: {record.reason}")
        return RunOutcome(record.state, record.reason, None, 0)
    except KeyboardInterrupt:
        cancelled = cancel_request(files)
        if cancelled is not None:
            write_state(files, RunState.CANCELLED, f"{cancelled}, while {state.value.lower()}")
        else:
            write_state(files, RunState.INTERRUPTED, f"interrupted while {state.value.lower()}")
        raise
    except Exception as error:
        files.controller_log.write_text(traceback.format_exc())
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"{state.value.lower()} failed: {type(error).__name__}: {first_line}"
        write_state(files, RunState.FAILED, reason)
        raise RunFailed(f"run {plan.spec.run}: {reason} (details in {files.controller_log})") from None
    write_state(files, RunState.SUCCEEDED)
    return RunOutcome(RunState.SUCCEEDED, "", checkpoint, written)
