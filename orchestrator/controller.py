"""The controller: runs a plan's stages in order on a backend and keeps the run's state.

It knows nothing of any training method: the method travels inside the spec to
the workers. Every stage can be re-run: training resumes from Ray Train's last
checkpoint, evaluation skips subnets already written for that checkpoint.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends import backend_for
from orchestrator.errors import UserError
from orchestrator.evaluation_job import run_evaluation
from orchestrator.plan import Plan
from orchestrator.profile_job import ensure_forecast
from orchestrator.run_monitor import RunMonitor, logged
from orchestrator.state import RunState, begin_submission, read_state, write_state
from orchestrator.stopping import RunStopped, cancel_request, check_before_evaluation, check_before_training, clear_stop
from orchestrator.storage.run_store import RunStore
from orchestrator.training_job import run_training


@dataclass(frozen=True)
class RunOutcome:
    state: RunState
    reason: str
    checkpoint: Path | None
    subnets_written: int


class RunFailed(Exception):
    """A stage failed; the message is one line, the traceback is in the run's controller.log."""


def _announce(plan: Plan) -> None:
    """Write the run's plan and mark it PENDING (a finished run keeps its state until it runs again)."""
    store = RunStore(plan.run_dir)
    running = read_state(store.state_path)
    if running is not None and running.controller_alive():
        raise UserError(
            f"run {plan.spec.run} is already running (pid {running.pid} on {running.host}); "
            f"deps-orch cancel {plan.spec.run} stops it"
        )
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    store.plan_path.write_text(json.dumps(plan.describe(), indent=2))
    if not store.state_path.exists():
        write_state(store.state_path, RunState.PENDING)


def execute(plan: Plan, echo: Callable[[str], None] = print) -> RunOutcome:
    _announce(plan)
    return _execute(plan, echo, backend_for(plan))


def execute_comparison(plans: list[Plan], echo: Callable[[str], None] = print) -> list[RunOutcome | RunFailed]:
    """Run several plans (one per method of a comparison) one after another on one cluster.

    A failed run does not stop the others; its RunFailed is returned in its place.
    Ctrl-C or SIGTERM stops them all (the run in flight is left INTERRUPTED).
    """
    for plan in plans:
        _announce(plan)
    outcomes: list[RunOutcome | RunFailed] = []
    with ExitStack() as stack:
        try:
            stack.enter_context(backend_for(plans[0]))
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise RunFailed(f"comparison {plans[0].spec.group}: the cluster did not start: {first_line}") from None
        for plan in plans:
            try:
                outcomes.append(_execute(plan, echo, nullcontext()))
            except RunFailed as failure:
                echo(str(failure))
                outcomes.append(failure)
    return outcomes


def _execute(plan: Plan, echo: Callable[[str], None], cluster: AbstractContextManager) -> RunOutcome:
    store = RunStore(plan.run_dir)
    begin_submission(store.state_path)  # this process owns the run now; an old cancel or stop no longer applies
    clear_stop(plan.run_dir)
    echo = logged(plan.run_dir, echo)
    state = RunState.PENDING
    try:
        with cluster, RunMonitor(plan, echo):
            if plan.spec.forecast.measure:
                state = RunState.FORECASTING
                write_state(store.state_path, state)
                ensure_forecast(plan, plan.spec.forecast.steps, echo)
            check_before_training(plan)
            state = RunState.TRAINING
            write_state(store.state_path, state)
            alloc = plan.training
            echo(f"[{plan.spec.run}] training {plan.method} on {alloc.devices} {alloc.price.device_type}")
            checkpoint = run_training(plan, echo)
            check_before_evaluation(plan)
            state = RunState.EVALUATING
            write_state(store.state_path, state)
            echo(f"[{plan.spec.run}] evaluating {len(plan.subnets)} subnets, {plan.spec.evaluation.workers} workers")
            written = run_evaluation(plan, checkpoint)
    except RunStopped as stopped:
        record = stopped.record
        write_state(store.state_path, record.state, record.reason)
        where = f"after epoch {record.epoch + 1}" if record.epoch >= 0 else "before any epoch was trained"
        echo(f"[{plan.spec.run}] {record.state.value} {where}: {record.reason}")
        return RunOutcome(record.state, record.reason, None, 0)
    except KeyboardInterrupt:
        cancelled = cancel_request(plan.run_dir)
        if cancelled is not None:
            write_state(store.state_path, RunState.CANCELLED, f"{cancelled}, while {state.value.lower()}")
        else:
            write_state(store.state_path, RunState.INTERRUPTED, f"interrupted while {state.value.lower()}")
        raise
    except Exception as error:
        (plan.run_dir / "controller.log").write_text(traceback.format_exc())
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"{state.value.lower()} failed: {type(error).__name__}: {first_line}"
        write_state(store.state_path, RunState.FAILED, reason)
        raise RunFailed(f"run {plan.spec.run}: {reason} (details in {plan.run_dir / 'controller.log'})") from None
    write_state(store.state_path, RunState.SUCCEEDED)
    return RunOutcome(RunState.SUCCEEDED, "", checkpoint, written)
