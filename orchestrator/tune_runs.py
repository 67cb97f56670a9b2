"""Runs as Ray Tune trials on one cluster: a sweep's, or a `methods:` comparison's when the cluster fits several.

Each trial is an ordinary deps-orch run, driven by the same controller: its Tune
actor runs `execute` on the cluster in a thread and reports each epoch to Tune as
its ledger row lands (`val_top1`, the smallest subnet's, the loss, the dollars so
far), so a sweep's scheduler decides on what the ledger says. A trial the
scheduler stops is cancelled the way `deps-orch cancel` does it, keeps its ledger
and checkpoint, skips evaluation and ends `STOPPED_EARLY`. The trial actors take
no CPU: each trial's Ray Train workers reserve their own, and no more trials run
at once than the cluster fits.

Every trial records its own hold on its devices (`holds.parquet`) from its set-up
to its end; the cluster's start (from when the devices were first held) is
charged to the first run, its stop to the last, each with all the devices the
trials at once take, so the held time of the trials covers the cluster's life.

A sweep submitted again is restored by Tune: finished and stopped trials stay so,
a cut trial resumes from its checkpoint. A comparison starts its trials afresh:
each run resumes from its own files, a finished one at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.console import QuietConsole
from orchestrator.controller import RunOutcome, execute
from orchestrator.device_holds import device_hold
from orchestrator.plan import Plan, make_plan
from orchestrator.reports.cost_report import COLUMNS, run_costs
from orchestrator.reports.table import render
from orchestrator.spec import JobSpec
from orchestrator.sweep_spec import SchedulerSpec
from orchestrator.tracking import prepare_store
from workers.rundir.budget import budget_verdict
from workers.rundir.forecast import load_forecast
from workers.rundir.pricing import Usage
from workers.rundir.state import RunState, read_state, write_state
from workers.rundir.stops import request_cancel
from workers.rundir.tables import RunStore

POLL_SECONDS = 0.5
TRIAL_MEMORY = 64 * 2**20  # a trial actor's only reservation: Tune needs one, its Train workers hold the CPUs


# A trial that ends in one of these goes on when submitted again: Tune is told it errored, so a restored sweep
# resumes it (a run stopped by its time limit, or interrupted, is not done).
RESUMABLE = (RunState.TIME_LIMIT, RunState.INTERRUPTED)


class TrialRun(tune.Trainable):
    """One trial: the controller in a thread, each new ledger row one Tune result."""

    def setup(self, config: dict) -> None:
        trial = config["trial"]
        # Tune moves each trial into a directory of its own; the spec's relative paths (storage.root, a dataset's
        # root) are the submitting process's.
        with contextlib.suppress(OSError):
            os.chdir(trial["cwd"])
        self.plan: Plan = make_plan(JobSpec.model_validate(trial["spec"]))
        self.scheduler: str = trial["scheduler"]
        self.hold_kind: str = trial["hold_kind"]
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
        hold = device_hold(self.plan, self.hold_kind, None)
        try:
            self.outcome = execute(self.plan, nullcontext(), lambda line: None, hold)
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
                    self._raise_if_unfinished()
                return _result(ledger, row, done=row["epoch"] == last_epoch)
            if not self.thread.is_alive():
                self._raise_if_unfinished()
                state = read_state(self.plan.files)  # it stopped before its last epoch (or never started)
                return {"done": True, "state": state.state.value if state else "", "epoch": self.reported + 1}
            time.sleep(POLL_SECONDS)

    def _raise_if_unfinished(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"trial {self.plan.spec.run}: {self.error}")
        record = read_state(self.plan.files)
        if record is not None and record.state in RESUMABLE:
            raise RuntimeError(f"trial {self.plan.spec.run}: {record.state.value}: {record.reason}")

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {"reported": self.reported}  # the run keeps its own checkpoints; Tune's only says where it was

    def load_checkpoint(self, checkpoint: dict) -> None:
        self.reported = checkpoint.get("reported", -1)

    def cleanup(self) -> None:
        if not self.thread.is_alive():
            return
        files = self.plan.files
        by = f"the sweep's {self.scheduler} scheduler" if self.scheduler != "none" else "Ray Tune's stop"
        request_cancel(files, by)
        self.thread.join()
        if self.scheduler != "none":
            epochs = self.reported + 1
            write_state(files, RunState.STOPPED_EARLY, f"stopped early by {by} after {epochs} epochs")


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


def _scheduler(settings: SchedulerSpec | None, epochs: int) -> Any:
    if settings is None:
        return None
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


def runs_at_once(plans: list[Plan], resources: dict[str, float], max_concurrent: int | None) -> int:
    """As many runs as `max_concurrent` allows and the cluster's CPUs and GPUs fit (each run's workers reserve
    their own), at least one."""
    cluster = plans[0].spec.cluster
    needs = {"CPU": cluster.num_workers * cluster.cpus_per_worker, "GPU": cluster.num_workers * cluster.gpus_per_worker}
    fits = min((int(resources.get(kind, 0.0) // need) for kind, need in needs.items() if need > 0), default=1)
    return max(1, min(fits, max_concurrent or fits, len(plans)))


class _Progress(tune.Callback):
    def __init__(self, echo, metric: str) -> None:
        self.echo, self.metric = echo, metric

    def __getstate__(self) -> dict:  # Tune keeps its callbacks with the experiment; the console is not kept
        return {"metric": self.metric}

    def __setstate__(self, state: dict) -> None:
        self.echo, self.metric = print, state["metric"]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "loss" not in result:  # a trial that ended before an epoch: its state line says why
            return
        shown = [f"epoch {result.get('epoch')}", f"loss {result['loss']:.3f}"]
        for name in dict.fromkeys([self.metric, "val_top1"]):
            value = result.get(name)
            if name != "loss" and isinstance(value, float):
                shown.append(f"{name} {value:.2f}")
        self.echo(f"[{trial.config['trial']['run']}] {', '.join(shown)}, ${result.get('dollars', 0):.4f} so far")


@dataclass(frozen=True)
class TrialSettings:
    """How a set of runs goes through Tune: a sweep's (its scheduler, restored when submitted again) or a
    comparison's (no scheduler, started afresh)."""

    name: str  # the sweep's or the comparison's
    kind: str  # "sweep" or "comparison", for the lines it prints
    experiment: Path  # Tune's own files
    restore: bool
    scheduler: SchedulerSpec | None = None
    metric: str = "val_top1"
    mode: str = "max"


def cluster_resources() -> dict[str, float]:
    return ray.cluster_resources()


def run_sweep(
    spec: JobSpec,
    plans: list[Plan],
    cluster: AbstractContextManager,
    console: QuietConsole,
    hold_kind: str,
    since: float,
) -> int:
    sweep = spec.sweep
    assert sweep is not None
    settings = TrialSettings(
        name=spec.run,
        kind="sweep",
        experiment=plans[0].run_dir.parent.resolve() / "_sweeps" / spec.run,
        restore=True,
        scheduler=sweep.scheduler,
        metric=sweep.metric,
        mode=sweep.mode,
    )
    with ExitStack() as last_hold, ExitStack() as stack:  # the last run's stop hold ends after the cluster's
        stack.enter_context(cluster)
        at_once = runs_at_once(plans, cluster_resources(), sweep.max_concurrent)
        return run_trials(plans, settings, at_once, console, hold_kind, since, last_hold)


def run_trials(
    plans: list[Plan],
    settings: TrialSettings,
    at_once: int,
    console: QuietConsole,
    hold_kind: str,
    since: float,
    last_hold: ExitStack,
) -> int:
    """Run `plans` as Tune trials, `at_once` at a time, on the cluster this process is connected to; returns the
    exit code of `deps-orch submit`. `last_hold` is left holding the devices until the cluster has stopped."""
    name, started = settings.name, time.time()
    devices = at_once * plans[0].training.devices
    with device_hold(plans[0], hold_kind, since, devices):  # the cluster's start, charged to the first run
        pass
    # A trial the budget stopped, or never started, ends with a result that has no metric to report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    prepare_store(plans[0])
    noun = "trials" if settings.kind == "sweep" else "runs"
    console.echo(f"[{name}] {settings.kind}: {len(plans)} {noun}, {at_once} at a time, on Ray Tune")
    epochs = max(p.phases[-1][2] for p in plans) + 1
    trainable = tune.with_resources(TrialRun, {"cpu": 0, "memory": TRIAL_MEMORY})
    scheduler = settings.scheduler.name if settings.scheduler is not None else "none"
    configs = [
        {
            "run": p.spec.run,
            "spec": p.spec.model_dump(mode="json"),
            "scheduler": scheduler,
            "hold_kind": hold_kind,
            "cwd": os.getcwd(),
        }
        for p in plans
    ]
    experiment = settings.experiment
    if settings.restore and tune.Tuner.can_restore(str(experiment)):  # finished and stopped trials stay so
        console.echo(f"[{name}] resuming the sweep from {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        if not settings.restore:  # Tune's record only: every run resumes from its own files
            shutil.rmtree(experiment, ignore_errors=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                scheduler=_scheduler(settings.scheduler, epochs),
                max_concurrent_trials=at_once,
                trial_dirname_creator=lambda trial: trial.config["trial"]["run"],
            ),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=str(experiment.parent),
                verbose=0,
                callbacks=[_Progress(console.echo, settings.metric)],
            ),
        )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        console.error(
            f"deps-orch: interrupted; submit the {settings.kind} again to resume {name}: finished {noun} are kept, "
            "the others resume from their last checkpoints"
        )
        return 130
    finally:
        last_hold.enter_context(device_hold(plans[-1], hold_kind, time.time(), devices))  # the cluster's stop
    return _summary(plans, settings, time.time() - started, console)


def _summary(plans: list[Plan], settings: TrialSettings, seconds: float, console: QuietConsole) -> int:
    records = {p.spec.run: read_state(p.files) for p in plans}
    states = [record.state if record is not None else None for record in records.values()]

    def count(*wanted: RunState | None) -> int:
        return sum(1 for state in states if state in wanted)

    for run, record in records.items():
        if record is None:
            console.echo(f"[{run}] never started")
        elif record.state not in (RunState.SUCCEEDED, RunState.STOPPED_EARLY):
            console.echo(f"[{run}] {record.state.value}: {record.reason or 'the trial ended before the run did'}")
    ended = (RunState.SUCCEEDED, RunState.STOPPED_EARLY, RunState.BUDGET_EXHAUSTED, RunState.CANCELLED, *RESUMABLE)
    failed = len(states) - count(*ended)  # failed, or left in a state no run ends in
    console.echo(
        f"[{settings.name}] {len(plans)} {'trials' if settings.kind == 'sweep' else 'runs'} in {seconds:.1f}s: "
        f"{count(RunState.SUCCEEDED)} finished, {count(RunState.STOPPED_EARLY)} stopped early, "
        f"{count(RunState.BUDGET_EXHAUSTED)} stopped by the budget, {failed} failed"
    )
    console.echo(render(COLUMNS, [run_costs(p.run_dir) for p in plans if p.run_dir.exists()]))
    if failed:
        return 1
    resumable = count(*RESUMABLE)
    if resumable:
        console.echo(
            f"[{settings.name}] {resumable} not finished: submit the {settings.kind} again (a requeued job does) "
            "to go on from their last checkpoints"
        )
        return 75 if count(RunState.TIME_LIMIT) else 130
    return 0
