"""MLflow records of a run: its resolved spec as params, every epoch's figures as metrics, its plots as artifacts.

The controller opens the record when the run starts and the run monitor logs each
epoch as its ledger row lands, so a run shows in `mlflow ui` while it trains. The
MLflow run's id is kept in the run directory: a resumed run goes on logging into
the same record, from the epoch after the last one logged, so no step is logged
twice. Without `tracking.uri` the store is a SQLite file under the storage root
(`mlflow ui --backend-store-uri sqlite:///<root>/_mlflow/mlflow.db`). A tracking
server that cannot be reached never stops a run: the failure goes to run.log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.plan import Plan
from orchestrator.reports.compare import compare
from orchestrator.reports.plots import write_plots
from workers.rundir.state import RunState
from workers.rundir.tables import RunStore

LOCAL_STORE = "_mlflow"
METRICS = ("loss", "subnet_loss", "lr", "val_top1", "val_top1_smallest", "images_per_second", "wall_seconds")


def tracking_uri(plan: Plan) -> tuple[str, str | None]:
    """(the tracking URI, the artifact location for a new experiment: None lets the server choose)."""
    uri = plan.spec.tracking.uri
    if uri is not None:
        return uri, None
    store = (Path(plan.spec.storage.root) / LOCAL_STORE).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


def _flat(prefix: str, value: object) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), item)
    else:
        yield prefix, json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


class RunTracker:
    """One run's MLflow record."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.files = plan, plan.files
        uri, artifacts = tracking_uri(plan)
        self.client = MlflowClient(tracking_uri=uri)
        saved = self.files.read_json(self.files.tracking) or {}
        if saved.get("uri") == uri and saved.get("run_id"):
            self.run_id, self.logged = saved["run_id"], int(saved.get("logged_epochs", 0))
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = plan.spec.tracking.experiment or plan.spec.group or plan.spec.run
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name, artifact_location=artifacts)
        )
        tags = {"deps_orch.run": plan.spec.run, "deps_orch.method": plan.method, "deps_orch.run_dir": str(plan.run_dir)}
        if plan.spec.group:
            tags["deps_orch.group"] = plan.spec.group
        run = self.client.create_run(experiment_id, run_name=plan.spec.run, tags=tags)
        self.run_id, self.logged = run.info.run_id, 0
        spec = plan.spec.model_dump(mode="json", exclude={"sweep"})
        params = [Param(key[:250], text[:6000]) for key, text in _flat("", spec)]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self._save()

    def _save(self) -> None:
        uri = self.client.tracking_uri
        self.files.write_json(self.files.tracking, {"uri": uri, "run_id": self.run_id, "logged_epochs": self.logged})

    def log_epochs(self, rows: list[dict]) -> None:
        """Every ledger row from the first epoch not logged yet, as metrics at step = epoch."""
        rows = sorted((r for r in rows if r["epoch"] >= self.logged), key=lambda r: r["epoch"])
        if not rows:
            return
        now = int(time.time() * 1000)
        metrics = []
        for row in rows:
            values = {k: row.get(k) for k in METRICS} | dict(row.get("scalars") or {})
            values |= {"device_hours": row["device_hours"], "dollars": row["dollars"]}
            metrics += [Metric(k, float(v), now, row["epoch"]) for k, v in values.items() if v is not None]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        self.logged = rows[-1]["epoch"] + 1
        self._save()

    def finish(self, state: str, plots: list[Path]) -> None:
        for plot in plots:
            self.client.log_artifact(self.run_id, str(plot), artifact_path="plots")
        self.client.set_tag(self.run_id, "deps_orch.state", state)
        status = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED"}.get(state, "KILLED")
        self.client.set_terminated(self.run_id, status=status)


def prepare_store(plan: Plan) -> None:
    """Create the store's tables now, in one process: trials opening a new SQLite store at once would race."""
    if not plan.spec.tracking.enabled:
        return
    try:
        MlflowClient(tracking_uri=tracking_uri(plan)[0]).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - each run says so itself when it cannot record
        plan.files.append_log(f"[{plan.spec.run}] tracking: the store did not open: {type(error).__name__}: {error}")


def open_tracker(plan: Plan) -> RunTracker | None:
    """The run's record, opened (or reopened) for this submission; None if tracking is off or unreachable."""
    if not plan.spec.tracking.enabled:
        return None
    try:
        return RunTracker(plan)
    except Exception as error:  # noqa: BLE001 - a tracker that cannot be reached must not stop the run
        plan.files.append_log(f"[{plan.spec.run}] tracking: not recorded in MLflow: {type(error).__name__}: {error}")
        return None


def log_new_epochs(tracker: RunTracker | None) -> None:
    if tracker is None:
        return
    try:
        tracker.log_epochs(RunStore(tracker.files).epoch_rows())
    except Exception as error:  # noqa: BLE001
        tracker.files.append_log(f"[{tracker.plan.spec.run}] tracking: {type(error).__name__}: {error}")


class TrackedRun:
    """Closes the record as the run's stages end: the epochs not logged yet, the run's plots, the state it ends in
    (`state_of(plan, the exception leaving the stages or None)`)."""

    def __init__(self, tracker: RunTracker | None, state_of: Callable[[Plan, BaseException | None], RunState]) -> None:
        self.tracker, self.state_of = tracker, state_of

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        log_new_epochs(tracker)
        try:
            plots = write_plots(compare([tracker.plan.run_dir]), tracker.plan.run_dir / "plots")
            tracker.finish(self.state_of(tracker.plan, error).value, plots)
        except Exception as failure:  # noqa: BLE001
            tracker.files.append_log(f"[{tracker.plan.spec.run}] tracking: {type(failure).__name__}: {failure}")
