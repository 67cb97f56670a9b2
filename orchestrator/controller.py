"""The controller: runs a plan's stages in order on a backend and keeps the run's state.

It knows nothing of any training method: the method travels inside the spec to
the workers. Every stage can be re-run: training resumes from Ray Train's last
checkpoint, evaluation skips subnets already written for that checkpoint.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends import backend_for
from orchestrator.evaluation_job import run_evaluation
from orchestrator.plan import Plan
from orchestrator.state import RunState, write_state
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


def execute(plan: Plan, echo: Callable[[str], None] = print) -> RunOutcome:
    store = RunStore(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    store.plan_path.write_text(json.dumps(plan.describe(), indent=2))
    state = RunState.PENDING
    try:
        with backend_for(plan):
            state = RunState.TRAINING
            write_state(store.state_path, state)
            alloc = plan.training
            echo(f"[{plan.spec.run}] training {plan.method} on {alloc.devices} {alloc.price.device_type}")
            checkpoint = run_training(plan)
            state = RunState.EVALUATING
            write_state(store.state_path, state)
            echo(f"[{plan.spec.run}] evaluating {len(plan.subnets)} subnets, {plan.spec.evaluation.workers} workers")
            written = run_evaluation(plan, checkpoint)
    except KeyboardInterrupt:
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
