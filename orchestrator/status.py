"""`deps-orch status`: what every run under a storage root is doing, from its files alone.

A run's directory holds all of it (`workers/rundir/`): its state (state, reason,
controller, time), its plan (method, phases, budget), the ledger tables, the
forecast measured at launch and where its cluster's dashboard was. Nothing here talks to Ray, so status works on a login
node, after the cluster is gone, and on runs of any backend that share the storage.
The same line `submit` prints while it runs comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.reports.table import Column, render
from orchestrator.storage.discovery import discover_runs, find_run_dir, is_run_dir, runs_in_group
from workers.rundir.estimator import EpochCostEstimator, ledger_rows, outlook
from workers.rundir.forecast import Forecast, load_forecast
from workers.rundir.layout import RunDir
from workers.rundir.plan_record import PlanRecord
from workers.rundir.pricing import Usage
from workers.rundir.state import RunState, StateRecord, read_state

BAR_WIDTH = 20


@dataclass(frozen=True)
class RunStatus:
    run: str
    run_dir: Path
    method: str | None
    state: RunState | None
    reason: str
    controller_gone: bool  # the state says running, but its controller process is not there any more
    epochs_done: int
    epochs_total: int
    phase: str | None  # of the epoch in flight while training, else of the last epoch trained
    scalars: dict[str, float]  # the method's own values at the last epoch's end (DepS: epsilon)
    images_per_second: float | None
    subnets_done: int
    subnets_total: int
    elapsed_seconds: float
    eta_seconds: float | None
    spent: Usage
    forecast_total: Usage | None  # spent + what the rest will take, by the forecast and the epochs so far
    forecast_at_launch: Forecast | None
    budget: dict
    record: StateRecord | None

    @property
    def running(self) -> bool:
        return self.state is not None and not self.state.is_terminal and not self.controller_gone

    @property
    def state_label(self) -> str:
        if self.state is None:
            return "UNKNOWN"
        return f"{self.state.value} (stale)" if self.controller_gone else self.state.value

    def bar(self) -> str:
        total = max(1, self.epochs_total)
        filled = round(BAR_WIDTH * min(self.epochs_done, total) / total)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * self.epochs_done // total:3d}%"

    def row(self) -> dict:
        return {
            "run": self.run,
            "method": self.method,
            "state": self.state_label,
            "epoch": f"{self.epochs_done}/{self.epochs_total}",
            "progress": self.bar(),
            "phase": self.phase,
            "elapsed": clock(self.elapsed_seconds),
            "eta": clock(self.eta_seconds) if self.running else None,
            "dollars": self.spent.dollars,
            "device_hours": self.spent.device_hours,
            "forecast_dollars": self.forecast_total.dollars if self.forecast_total is not None else None,
            "budget_dollars": self.budget.get("max_dollars"),
            "reason": self.reason or None,
        }


COLUMNS = [
    Column("run", "run"),
    Column("method", "method"),
    Column("state", "state"),
    Column("epoch", "epoch"),
    Column("progress", "progress"),
    Column("phase", "phase"),
    Column("elapsed", "elapsed"),
    Column("eta", "ETA"),
    Column("dollars", "$ so far", ".4f"),
    Column("forecast_dollars", "$ forecast", ".4f"),
    Column("budget_dollars", "$ budget", ".4f"),
]


def clock(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_status(run_dir: Path, now: datetime | None = None) -> RunStatus:
    now = now or datetime.now(timezone.utc)
    files = RunDir(run_dir)
    plan = PlanRecord.read(files)
    record = read_state(files)
    epochs, subnets, lost = ledger_rows(files)
    forecast = load_forecast(files)
    phases = plan.phase_tuples() if plan is not None else []
    if not phases and forecast is not None:
        phases = [(p.phase, p.first_epoch, p.first_epoch + p.epochs - 1) for p in forecast.phases]

    state = record.state if record is not None else None
    gone = record is not None and not record.state.is_terminal and record.controller_alive() is False
    working = state in (RunState.TRAINING, RunState.EVALUATING) and not gone
    # One training job trains every stage: a run that is not running pays one set-up to resume.
    look = outlook(forecast, phases, epochs, subnets, running=working, lost_rows=lost)
    done = {r["epoch"] for r in epochs}
    in_flight = min((e for e in range(look.epochs_total) if e not in done), default=None)
    phase = epochs[-1]["phase"] if epochs else None
    if state is RunState.TRAINING and in_flight is not None:
        phase = next((name for name, first, last in phases if first <= in_flight <= last), phase)
    last = epochs[-1] if epochs else {}

    eta = look.remaining_seconds
    training_now = state is RunState.TRAINING and working and in_flight is not None
    if eta is not None and training_now and record is not None and record.started_at:
        # The epoch in flight has run since the later of the last epoch's end and the start of training.
        since = datetime.fromisoformat(record.updated_at or record.started_at)
        if last.get("finished_at") is not None:
            since = max(since, last["finished_at"])
        current = EpochCostEstimator(forecast, epochs).epoch_seconds(phase or "") or 0.0
        eta = max(0.0, eta - min((now - since).total_seconds(), current))

    method = plan.method if plan is not None else None
    eval_total = forecast.eval_subnets if forecast is not None else (plan.eval_subnets if plan is not None else 0)
    has_estimate = forecast is not None or bool(epochs)
    return RunStatus(
        run=plan.run if plan is not None else run_dir.name,
        run_dir=run_dir,
        method=method or (last.get("method") if last else None),
        state=state,
        reason=record.reason if record is not None else "",
        controller_gone=gone,
        epochs_done=look.epochs_done,
        epochs_total=look.epochs_total,
        phase=phase,
        scalars=last.get("scalars") or {},
        images_per_second=last.get("images_per_second"),
        subnets_done=len(subnets),
        subnets_total=int(eval_total or 0),
        elapsed_seconds=record.elapsed_seconds(now) if record is not None else 0.0,
        eta_seconds=eta,
        spent=look.spent,
        forecast_total=look.total if has_estimate else None,
        forecast_at_launch=forecast,
        budget=plan.budget.model_dump() if plan is not None else {},
        record=record,
    )


def progress_line(status: RunStatus) -> str:
    """One line per change while `submit` runs, and for `deps-orch status RUN`'s header."""
    parts = [
        f"[{status.run}] {status.state_label}",
        f"epoch {status.epochs_done}/{status.epochs_total} {status.bar()}",
    ]
    if status.phase:
        parts.append(status.phase)
    parts += [f"{name} {value:.3g}" for name, value in status.scalars.items()]
    if status.images_per_second:
        parts.append(f"{status.images_per_second:.0f} img/s")
    if status.state is RunState.EVALUATING:
        parts.append(f"subnets {status.subnets_done}/{status.subnets_total}")
    parts.append(f"elapsed {clock(status.elapsed_seconds)}")
    if status.running and status.eta_seconds is not None:
        parts.append(f"ETA {clock(status.eta_seconds)}")
    money = f"${status.spent.dollars:.4f}"
    if status.forecast_total is not None:
        money += f" of ${status.forecast_total.dollars:.4f} forecast"
    if status.budget.get("max_dollars") is not None:
        money += f" (budget ${status.budget['max_dollars']:.4f})"
    parts.append(money)
    return "  ".join(parts)


def detail(status: RunStatus) -> str:
    """`deps-orch status RUN`: the progress line, then why, where, and forecast against actual per phase."""
    lines = [progress_line(status)]
    if status.reason:
        lines.append(f"  reason: {status.reason}")
    record = status.record
    if status.controller_gone and record is not None:
        lines.append(f"  controller pid {record.pid} on {record.host} is gone; submit the run again to resume it")
    elif status.running and record is not None:
        lines.append(f"  controller: pid {record.pid} on {record.host}")
    if status.state is not None and status.state.is_resumable:
        lines.append("  resumable: submit the same spec again (it continues from the last checkpoint)")
    spent = status.spent
    lines.append(f"  spent: {spent.device_hours:.4f} device-hours, ${spent.dollars:.4f}")
    if status.budget:
        limits = ", ".join(f"{k} {v}" for k, v in status.budget.items() if v is not None)
        if limits:
            lines.append(f"  budget: {limits}")
    forecast = status.forecast_at_launch
    epochs, _, _ = ledger_rows(status.run_dir)
    if forecast is not None:
        lines.append(
            f"  forecast at launch: {forecast.total_device_hours:.4f} device-hours, ${forecast.total_dollars:.4f}, "
            f"about {clock(forecast.wall_seconds)} (measured {forecast.measured_at[:19]}Z)"
        )
        lines.append(f"  {'phase':<12} {'epochs':>7} {'s/epoch forecast':>17} {'s/epoch actual':>15} {'$ actual':>10}")
        for p in forecast.phases:
            rows = [r for r in epochs if r["phase"] == p.phase]
            actual = sum(r["wall_seconds"] for r in rows) / len(rows) if rows else None
            dollars = sum(r["dollars"] for r in rows)
            lines.append(
                f"  {p.phase:<12} {len(rows):>3}/{p.epochs:<3} {p.epoch_seconds:>17.2f} "
                f"{(f'{actual:.2f}' if actual is not None else '-'):>15} {dollars:>10.4f}"
            )
    if status.subnets_total:
        lines.append(f"  evaluation: {status.subnets_done}/{status.subnets_total} subnets")
    cluster = read_cluster(status.run_dir)
    if cluster.get("dashboard_url"):
        where = "live" if status.running else "as of the last submission; gone with a local cluster"
        lines.append(f"  dashboard: {cluster['dashboard_url']} ({where}); deps-orch dashboard {status.run}")
    lines.append(f"  log: {RunDir(status.run_dir).log}")
    return "\n".join(lines)


def read_cluster(run_dir: Path) -> dict:
    files = RunDir(run_dir)
    data = files.read_json(files.cluster)
    return data if isinstance(data, dict) else {}


def run_dirs(root: Path) -> list[Path]:
    """Every run under the storage root, most recently updated first."""
    return [r.path for r in sorted(discover_runs(root), key=lambda r: r.updated_at, reverse=True)]


def status_report(run: str | None, root: Path, fmt: str = "table") -> str:
    """`deps-orch status [RUN | COMPARISON]`: one run in detail, a comparison's runs, or every run under the root."""
    if run is not None and (is_run_dir(Path(run)) or is_run_dir(root / run) or not runs_in_group(root, run)):
        status = read_status(find_run_dir(run, root))
        return detail(status) if fmt == "table" else render(COLUMNS, [status.row()], fmt)
    dirs = runs_in_group(root, run) if run is not None else run_dirs(root)
    if not dirs:
        return f"no runs under {root}"
    return render(COLUMNS, [read_status(d).row() for d in dirs], fmt)


def show_log(run_dir: Path, follow: bool = False, lines: int | None = None, poll_seconds: float = 1.0) -> int:
    """`deps-orch logs RUN`: the run's log; with `follow`, new lines as they come until no controller runs it."""
    import sys
    import time

    files = RunDir(run_dir)
    path = files.log
    if not path.exists() and not follow:
        raise UserError(f"{run_dir.name}: no log yet ({path})")
    offset = 0
    if path.exists():
        text = path.read_text()
        shown = text.splitlines()[-lines:] if lines else text.splitlines()
        if shown:
            print("\n".join(shown), flush=True)
        offset = len(text.encode())
    record = read_state(files)
    failed = record is not None and record.state is RunState.FAILED and files.controller_log.exists()

    def print_new() -> bool:
        nonlocal offset
        if not path.exists() or path.stat().st_size <= offset:
            return False
        with open(path, "rb") as log:
            log.seek(offset)
            chunk = log.read()
        offset += len(chunk)
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
        return True

    try:
        while follow:
            if print_new():
                continue
            record = read_state(files)
            ended = record is not None and (record.state.is_terminal or record.controller_alive() is False)
            if ended:
                print_new()  # a state's log line is written before the state: what came since the last look
                failed = record.state is RunState.FAILED and files.controller_log.exists()
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return 0
    if failed:
        print(f"(the traceback is in {files.controller_log})", flush=True)
    return 0
