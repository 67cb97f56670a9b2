"""`deps-orch submit`, as a function: the CLI and the driver a backend starts elsewhere both call it.

It validates the spec, makes one plan per run, and then prints the plan with its
forecast (`dry_run`), or hands the submission to the spec's backend, which runs
it here or sends it to a cluster and follows it. A driver already inside the
cluster (`here`) runs the stages in its own process on the backend's cluster.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.backends import backend_for, describe_plan
from orchestrator.console import QuietConsole
from orchestrator.plan import make_plan
from orchestrator.profile_job import dry_run_forecasts
from orchestrator.reports.table import Column, render
from orchestrator.runner import Submission, run_here
from orchestrator.spec import JobSpec


def submit(
    spec: JobSpec,
    label: str | Path,
    *,
    dry_run: bool = False,
    no_forecast: bool = False,
    detach: bool = False,
    verbose: bool = False,
    here: bool = False,
) -> int:
    """Returns the exit code: 0 succeeded, 1 failed, 3 stopped by its budget, 130 interrupted or cancelled.

    `label` is how the user named the spec (its file), for the messages that say how to resubmit. Raises
    UserError (exit code 2) for a plan or a submission at fault.
    """
    plans = [make_plan(run_spec) for run_spec in spec.runs()]
    backend = backend_for(spec)
    described = tuple(describe_plan(plan) for plan in plans)
    submission = Submission(spec, plans, str(label), detach=detach, verbose=verbose, described=described)
    if dry_run:
        shown = _dry_run(submission, measure=not no_forecast and spec.forecast.measure)
        print(yaml.safe_dump(shown, sort_keys=False))
        if shown.get("projected"):  # the group's Table 2, also as text; YAML comments, so the output still parses
            table = render(PROJECTED_COLUMNS, shown["projected"])
            print("\n".join(f"# {line}" for line in [f"projected: {submission.name}", *table.splitlines()]))
        return 0
    if here:
        return run_here(submission, backend.cluster(), backend.hold_kind)
    return backend.launch(submission, print)


def _dry_run(submission: Submission, measure: bool) -> dict:
    """The plan of each run with its backend's part, and each one's forecast measured on a cluster of its own."""
    described = [dict(d) for d in submission.described]
    if measure:
        backend = backend_for(submission.spec)
        cluster = backend.cluster() if backend.measures_dry_run else None
        with QuietConsole(verbose=submission.verbose):
            forecasts = dry_run_forecasts(submission.plans, cluster)
        for run, forecast in zip(described, forecasts):
            run["forecast"] = forecast
    if submission.spec.methods is None and submission.spec.sweep is None:
        return described[0]
    shown = {"comparison": submission.name, "runs": described}
    if measure and all(isinstance(run.get("forecast"), dict) for run in described):
        shown["projected"] = [projected_row(p.method, run["forecast"]) for p, run in zip(submission.plans, described)]
    return shown


PROJECTED_COLUMNS = (
    Column("method", "method"),
    Column("epochs", "epochs"),
    Column("device_minutes_per_epoch", "dev-min/epoch", ".3g"),
    Column("training_device_hours", "train dev-h", ".4g"),
    Column("eval_device_hours", "eval dev-h", ".4g"),
    Column("device_hours", "total dev-h", ".4g"),
    Column("dollars", "total $", ".4f"),
)


def projected_row(method: str, forecast: dict) -> dict:
    """A method's line of the group's projected Table 2, from its forecast summary."""
    epochs = sum(p["epochs"] for p in forecast["phases"])
    training = forecast["training"]["device_hours"]
    return {
        "method": method,
        "epochs": epochs,
        "device_minutes_per_epoch": round(training * 60 / epochs, 4) if epochs else None,
        "training_device_hours": training,
        "eval_device_hours": forecast["evaluation"]["device_hours"],
        "device_hours": forecast["total"]["device_hours"],
        "dollars": forecast["total"]["dollars"],
    }
