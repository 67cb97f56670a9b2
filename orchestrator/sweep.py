"""Running a sweep on Ray Tune: each trial is an ordinary deps-orch run, driven by the same controller.

A trial's Tune actor runs the controller (`execute`) on the sweep's cluster in a
thread and reports each epoch to Tune as its ledger row lands (`val_top1`, the
smallest subnet's, the loss, the dollars so far), so the scheduler decides on
what the ledger says. A trial the scheduler stops is cancelled the way `deps-orch
cancel` does it, keeps its ledger and checkpoint, skips evaluation and ends
`STOPPED_EARLY`. The trial actors take no CPU: each trial's Ray Train workers
reserve their own, and no more trials run at once than the cluster fits.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.console import QuietConsole
from orchestrator.controller import RunOutcome, execute
from orchestrator.plan import Plan, make_plan
from orchestrator.reports.cost_report import COLUMNS, run_costs
from orchestrator.reports.table import render
from orchestrator.spec import JobSpec
from orchestrator.sweep_spec import SweepSpec
from orchestrator.tracking import prepare_store
from workers.rundir.budget import budget_verdict
from workers.rundir.forecast import load_forecast
from workers.rundir.pricing import Usage
from workers.rundir.state import RunState, read_state, write_state
from workers.rundir.stops import request_cancel
from workers.rundir.tables import RunStore

POLL_SECONDS = 0.5
TRIAL_MEMORY = 64 * 2**20  # a trial actor's only reservation: Tune needs one, its Train workers hold the CPUs


class TrialRun(tune.Trainable):
    """One trial: the controller in a thread, each new ledger row one Tune result."""

    def setup(self, config: dict) -> None:
        trial = config["trial"]
        self.plan: Plan = make_plan(JobSpec.model_validate(trial["spec"]))
        self.scheduler: str = trial["scheduler"]
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        self.reported = -1
        self.thread = threading.Thread(target=self._run, name=f"trial {self.plan.spec.run}", daemon=True)
        verdict = no_room_to_start(self.plan)
        if verdict is not None:  # the thread is never started: the trial is reported done at once
            write_state(self.plan.files, RunState.BUDGET_EXHAUSTED, f"not started: {verdict}")
            return
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome = execute(self.plan, nullcontext(), lambda line: None)
        except BaseException as error:  # noqa: BLE001 - reported by step() as the trial's error
            self.error = error

    def step(self) -> dict:
        last_epoch = self.plan.phases[-1][2]
        while True:
            ledger = RunStore(self.plan.files).epoch_rows()
            row = next((r for r in ledger if r["epoch"] > self.reported), None)
            if row is not None:
                self.reported = row["epoch"]
                if row["epoch"] == last_epoch:  # the run evaluates next: the trial is done when it has
                    self.thread.join()
                    self._raise_if_failed()
                return _result(ledger, row, done=row["epoch"] == last_epoch)
            if not self.thread.is_alive():
                self._raise_if_failed()
                state = read_state(self.plan.files)  # it stopped before its last epoch (or never started)
                return {"done": True, "state": state.state.value if state else "", "epoch": self.reported + 1}
            time.sleep(POLL_SECONDS)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"trial {self.plan.spec.run}: {self.error}")

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {"reported": self.reported}  # the run keeps its own checkpoints; Tune's only says where it was

    def load_checkpoint(self, checkpoint: dict) -> None:
        self.reported = checkpoint.get("reported", -1)

    def cleanup(self) -> None:
        if not self.thread.is_alive():
            return
        files = self.plan.files
        request_cancel(files, f"the sweep's {self.scheduler} scheduler")
        self.thread.join()
        epochs = self.reported + 1
        write_state(
            files, RunState.STOPPED_EARLY, f"stopped early by the sweep's {self.scheduler} after {epochs} epochs"
        )


def no_room_to_start(plan: Plan) -> str | None:
    """Why the sweep's budget has no room for this trial's set-up, forecast and first epoch (as a trial of the
    sweep measured them), or None. A trial that has trained already, or the sweep's first, starts."""
    budget = plan.spec.budget
    pool = budget.pool
    if pool is None or RunStore(plan.files).epoch_rows():
        return None
    forecasts = [f for m in pool.members if m != pool.own and (f := load_forecast(Path(m))) is not None]
    if not forecasts:
        return None
    first = min(forecasts, key=lambda f: f.setup_seconds + f.measure_seconds + f.phases[0].epoch_seconds)
    seconds = first.startup_seconds + first.setup_seconds + first.measure_seconds + first.phases[0].epoch_seconds
    coming = Usage.of(seconds, first.devices, first.price_per_device_hour)
    return budget_verdict(budget, Usage(), coming, f"trial {plan.spec.run}'s set-up, forecast and first epoch")


def _result(ledger: list[dict], row: dict, done: bool) -> dict:
    """Tune's result for `row`'s epoch: its metric, and the dollars of the epochs up to it."""
    spent = [r["dollars"] for r in ledger if r["epoch"] <= row["epoch"]]
    return {
        "epoch": row["epoch"] + 1,
        "val_top1": row["val_top1"],
        "val_top1_smallest": row["val_top1_smallest"],
        "loss": row["loss"],
        "dollars": sum(spent),
        "done": done,
    }


def _scheduler(sweep: SweepSpec, epochs: int) -> Any:
    settings = sweep.scheduler
    if settings.name == "asha":
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.name == "median":
        return tune.schedulers.MedianStoppingRule(
            time_attr="epoch",
            grace_period=settings.grace_period,
            min_samples_required=settings.min_samples_required,
        )
    return None


def concurrent_trials(sweep: SweepSpec, plans: list[Plan], cluster_cpus: float) -> int:
    """As many trials as `max_concurrent` allows and the cluster's CPUs fit (each trial's workers reserve theirs)."""
    cluster = plans[0].spec.cluster
    per_trial = cluster.num_workers * cluster.cpus_per_worker
    fits = max(1, int(cluster_cpus // per_trial))
    return min(fits, sweep.max_concurrent or fits, len(plans))


class _Progress(tune.Callback):
    def __init__(self, echo, metric: str) -> None:
        self.echo, self.metric = echo, metric

    def __getstate__(self) -> dict:  # Tune keeps its callbacks with the experiment; the console is not kept
        return {"metric": self.metric}

    def __setstate__(self, state: dict) -> None:
        self.echo, self.metric = print, state["metric"]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.2f}" if isinstance(value, float) else ""
        self.echo(
            f"[{trial.config['trial']['run']}] epoch {result.get('epoch')} {shown}  ${result.get('dollars', 0):.4f}"
        )


def run_sweep(spec: JobSpec, plans: list[Plan], cluster: AbstractContextManager, console: QuietConsole) -> int:
    sweep = spec.sweep
    assert sweep is not None
    name = spec.run
    started = time.time()
    # A trial the budget stopped, or never started, ends with a result that has no metric to report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    prepare_store(plans[0])
    with cluster:
        concurrent = concurrent_trials(sweep, plans, ray.cluster_resources().get("CPU", 1.0))
        console.echo(f"[{name}] sweeping {len(plans)} trials, {concurrent} at a time, on Ray Tune")
        epochs = plans[0].phases[-1][2] + 1
        trainable = tune.with_resources(TrialRun, {"cpu": 0, "memory": TRIAL_MEMORY})
        configs = [
            {"run": p.spec.run, "spec": p.spec.model_dump(mode="json"), "scheduler": sweep.scheduler.name}
            for p in plans
        ]
        experiment = plans[0].run_dir.parent.resolve() / "_sweeps" / name
        if tune.Tuner.can_restore(str(experiment)):  # submitted again: finished and stopped trials stay so
            console.echo(f"[{name}] resuming the sweep from {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(configs)},
                tune_config=tune.TuneConfig(
                    metric=sweep.metric,
                    mode=sweep.mode,
                    scheduler=_scheduler(sweep, epochs),
                    max_concurrent_trials=concurrent,
                    trial_dirname_creator=lambda trial: trial.config["trial"]["run"],
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(experiment.parent),
                    verbose=0,
                    callbacks=[_Progress(console.echo, sweep.metric)],
                ),
            )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            console.error(
                f"deps-orch: interrupted; submit the sweep again to resume {name}: finished trials are kept, "
                "the others resume from their last checkpoints"
            )
            return 130
    states = [record.state if (record := read_state(p.files)) is not None else None for p in plans]

    def count(*wanted: RunState | None) -> int:
        return sum(1 for state in states if state in wanted)

    failed = count(None, RunState.FAILED)
    console.echo(
        f"[{name}] {len(plans)} trials in {time.time() - started:.1f}s: {count(RunState.SUCCEEDED)} finished, "
        f"{count(RunState.STOPPED_EARLY)} stopped early, {count(RunState.BUDGET_EXHAUSTED)} stopped by the budget, "
        f"{failed} failed"
    )
    console.echo(render(COLUMNS, [run_costs(p.run_dir) for p in plans if p.run_dir.exists()]))
    return 1 if failed else 0
