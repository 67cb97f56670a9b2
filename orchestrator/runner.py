"""Running a submission's runs in this process, on a cluster a backend provides, and saying how they went.

One run, or the runs of a `methods:` comparison one after another on the same
cluster (a failed run does not stop the others). Each prints its progress lines,
its outcome and the cost table; library output goes to the run's log.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass

from orchestrator.console import QuietConsole
from orchestrator.controller import RunFailed, RunOutcome, announce, execute
from orchestrator.device_holds import device_hold, held_since
from orchestrator.plan import Plan
from orchestrator.reports.cost_report import COLUMNS, run_costs
from orchestrator.reports.table import render
from orchestrator.spec import JobSpec
from orchestrator.tune_runs import TrialSettings, cluster_resources, run_sweep, run_trials, runs_at_once
from workers.rundir.state import RunState, read_state


@dataclass(frozen=True)
class Submission:
    """One `deps-orch submit`: the spec as given (one run, or a `methods:` comparison) and the plan of each run."""

    spec: JobSpec
    plans: list[Plan]
    label: str  # how the user named the spec (its file), for messages that say how to resubmit
    detach: bool = False
    verbose: bool = False  # library warnings and Ray's log lines on the console as well as in run.log
    described: tuple[dict, ...] = ()  # each plan as plan.json keeps it, with its backend's part (describe_plan)

    def description(self, index: int) -> dict:
        return self.described[index] if self.described else self.plans[index].describe()

    @property
    def name(self) -> str:
        """The comparison's name for a `methods:` spec, else the run's."""
        return self.plans[0].spec.group or self.spec.run


# Exit codes of `deps-orch submit` for runs that stopped on purpose.
# TIME_LIMIT's is EX_TEMPFAIL: the Slurm head requeues the job on it.
STOPPED_EXIT = {RunState.BUDGET_EXHAUSTED: 3, RunState.TIME_LIMIT: 75, RunState.CANCELLED: 130}


def run_here(submission: Submission, cluster: AbstractContextManager, hold_kind: str = "ray cluster") -> int:
    """Run every plan of the submission on `cluster`; returns the exit code of `deps-orch submit`.

    Each run's held time is recorded (`holds.parquet`): one run's from before its cluster starts until it has
    stopped; in a comparison, each run's from where the one before it ended, the last one's until the cluster
    has stopped, so the runs' holds tile the cluster's life.
    """
    plans = submission.plans
    for index, plan in enumerate(plans):
        announce(plan, submission.description(index))
    console = QuietConsole(plans[0].files, submission.verbose)
    with console:
        if submission.spec.sweep is not None:
            return run_sweep(submission.spec, plans, cluster, console, hold_kind, held_since() or time.time())
        if submission.spec.methods is None:
            return _one(submission, cluster, console, hold_kind)
        return _comparison(submission, cluster, console, hold_kind)


def _one(submission: Submission, cluster: AbstractContextManager, console: QuietConsole, hold_kind: str) -> int:
    (plan,) = submission.plans
    started = time.time()
    try:
        outcome = execute(plan, cluster, console.echo, device_hold(plan, hold_kind, held_since()))
    except RunFailed as error:
        console.error(f"deps-orch: error: {error}")
        return 1
    except KeyboardInterrupt:
        record = read_state(plan.files)
        how = "cancelled" if record is not None and record.state is RunState.CANCELLED else "interrupted"
        console.error(
            f"deps-orch: {how}; submit {submission.label} again to resume {plan.spec.run} from its last checkpoint"
        )
        return 130
    _report(outcome, plan.spec.run, submission.label, time.time() - started, [plan.run_dir], console)
    return 0 if outcome.state is RunState.SUCCEEDED else STOPPED_EXIT.get(outcome.state, 1)


def _report(outcome: RunOutcome, run: str, label: str, seconds: float, run_dirs: list, console: QuietConsole) -> None:
    if outcome.state is RunState.SUCCEEDED:
        console.echo(
            f"[{run}] {outcome.state.value} in {seconds:.1f}s; "
            f"{outcome.subnets_written} subnets evaluated; results in {run_dirs[0]}"
        )
    else:
        again = "again" if outcome.state is RunState.TIME_LIMIT else "again (with a larger budget)"
        console.echo(
            f"[{run}] {outcome.state.value} in {seconds:.1f}s: {outcome.reason}; "
            f"submit {label} {again} to resume from its last checkpoint"
        )
    console.echo(render(COLUMNS, [run_costs(d) for d in run_dirs]))


def _comparison(submission: Submission, cluster: AbstractContextManager, console: QuietConsole, hold_kind: str) -> int:
    """One run per method on one cluster, then their costs side by side: as Ray Tune trials, several at once,
    where the cluster fits more than one run (and `max_concurrent` allows), else one after another."""
    plans, name = submission.plans, submission.name
    console.echo(f"[{name}] comparing {', '.join(p.spec.run for p in plans)}")
    started = time.time()
    since = held_since() or started
    outcomes: list[RunOutcome | RunFailed] = []
    try:
        with ExitStack() as last_hold, ExitStack() as stack:  # the last run's hold ends after the cluster stops
            try:
                stack.enter_context(cluster)
            except Exception as error:
                first_line = (str(error).strip().splitlines() or [""])[0]
                console.error(f"deps-orch: error: comparison {name}: the cluster did not start: {first_line}")
                return 1
            at_once = runs_at_once(plans, cluster_resources(), submission.spec.max_concurrent)
            if at_once > 1:
                experiment = plans[0].run_dir.parent.resolve() / "_comparisons" / name
                settings = TrialSettings(name=name, kind="comparison", experiment=experiment, restore=False)
                return run_trials(plans, settings, at_once, console, hold_kind, since, last_hold)
            for index, plan in enumerate(plans):
                console.target = plan.files
                hold = device_hold(plan, hold_kind, since if index == 0 else time.time())
                if index == len(plans) - 1:
                    last_hold.enter_context(hold)
                try:
                    own_hold = nullcontext() if index == len(plans) - 1 else hold
                    outcome = execute(plan, nullcontext(), console.echo, own_hold)
                except RunFailed as failure:
                    console.echo(str(failure))
                    outcomes.append(failure)
                    continue
                outcomes.append(outcome)
                if outcome.state is RunState.TIME_LIMIT:  # the allocation ends: the next run would not get far
                    if index < len(plans) - 1:  # its hold has ended; the cluster's stop is still held for
                        last_hold.enter_context(device_hold(plan, hold_kind, time.time()))
                    break
    except KeyboardInterrupt:
        console.error(
            f"deps-orch: interrupted; submit {submission.label} again to resume {name}: finished runs are kept, "
            "the interrupted one resumes from its last checkpoint"
        )
        return 130
    if outcomes and isinstance(outcomes[-1], RunOutcome) and outcomes[-1].state is RunState.TIME_LIMIT:
        console.echo(
            f"[{name}] {RunState.TIME_LIMIT.value}: {outcomes[-1].reason}; submit {submission.label} again "
            "(a requeued job does) to go on from there: finished runs are kept"
        )
        return STOPPED_EXIT[RunState.TIME_LIMIT]
    failed = [o for o in outcomes if isinstance(o, RunFailed)]
    console.echo(
        f"[{name}] {len(outcomes) - len(failed)} of {len(outcomes)} runs succeeded in {time.time() - started:.1f}s; "
        f"results in {plans[0].run_dir.parent}"
    )
    console.echo(render(COLUMNS, [run_costs(p.run_dir) for p in plans if p.run_dir.exists()]))
    for failure in failed:
        console.error(f"deps-orch: error: {failure}")
    return 1 if failed else 0
