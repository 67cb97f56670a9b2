"""Watching a run from its controller: progress lines, the run's log, dashboard metrics, where the cluster is.

While the controller runs a plan's stages, `RunMonitor` re-reads the run's status
every few seconds. It prints a progress line (the one `deps-orch status` shows)
when an epoch or subnet is done or the state changes, appends it and each epoch's
ledger figures to `<run_dir>/run.log` (what `deps-orch logs` shows), and
publishes the figures as Ray metrics. On entry it records where the run's Ray
dashboard and metrics endpoints are (`ray.json`, read by `deps-orch dashboard`)
and turns on Ray Train's run tracking, so the run and its workers show in the
dashboard's Train view.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from orchestrator.metrics import RunMetrics
from orchestrator.plan import Plan
from orchestrator.status import progress_line, read_status
from workers.rundir.forecast import Forecast, load_forecast
from workers.rundir.layout import RunDir
from workers.rundir.tables import RunStore

POLL_SECONDS = 2.0


def logged(files: RunDir, echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo`, also appending each line, time-stamped, to the run's log."""

    def both(line: str) -> None:
        echo(line)
        files.append_log(line)

    return both


def record_cluster(files: RunDir) -> dict:
    """Where the connected Ray cluster's dashboard and metrics endpoints are; kept in `ray.json`."""
    import ray
    from ray._private.services import get_webui_url_from_internal_kv

    dashboard = get_webui_url_from_internal_kv()
    info = {
        "dashboard_url": f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard,
        "gcs_address": ray.get_runtime_context().gcs_address,
        "metrics": [
            f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
            for node in ray.nodes()
            if node.get("Alive") and node.get("MetricsExportPort")
        ],
        "host": os.uname().nodename,
        "recorded_at": datetime.now(timezone.utc).isoformat(),
    }
    files.write_json(files.cluster, info)
    return info


def epoch_line(run: str, epochs: int, row: dict) -> str:
    scalars = "".join(f" {name} {value:.4g}" for name, value in (row.get("scalars") or {}).items())
    sub = f" subnet loss {row['subnet_loss']:.3f}" if row.get("subnet_loss") is not None else ""
    return (
        f"[{run}] epoch {row['epoch'] + 1}/{epochs} {row['phase']} loss {row['loss']:.3f}{sub} lr {row['lr']:.4f}"
        f"{scalars} "
        f"wall {row['wall_seconds']:.1f}s overhead {row['overhead_seconds']:.1f}s "
        f"{row['images_per_second']:.0f} img/s {row['device_hours']:.5f} device-hours ${row['dollars']:.5f}"
    )


class RunMonitor:
    def __init__(
        self,
        plan: Plan,
        echo: Callable[[str], None],
        poll_seconds: float = POLL_SECONDS,
        on_forecast: Callable[[Forecast], None] | None = None,
        on_epochs: Callable[[], None] | None = None,
    ) -> None:
        """`echo` shows a line to the user and appends it to the run's log (see `logged`).

        `on_forecast` is called once a forecast newer than the one the run had is recorded (measured by the
        run's first training job); `on_epochs` whenever new ledger rows have landed.
        """
        self.plan, self.echo, self.poll_seconds, self.on_forecast = plan, echo, poll_seconds, on_forecast
        self.on_epochs = on_epochs
        self.files = plan.files
        self.store = RunStore(self.files)
        known = load_forecast(self.files)
        self._forecast_seen = known.measured_at if known is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown: tuple | None = None
        self._logged_epochs: set[tuple] = set()  # (epoch, finished_at): a redone epoch is logged again
        self._metrics = None

    def __enter__(self) -> RunMonitor:
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # read when a trainer is built, in this driver
        try:
            record_cluster(self.files)
        except Exception as error:  # no dashboard (e.g. a minimal Ray install): the run goes on without the record
            self.files.append_log(f"[{self.plan.spec.run}] no dashboard address: {error}")
        self._metrics = RunMetrics(self.plan.spec.run, self.plan.method)
        self._logged_epochs = {(r["epoch"], r["finished_at"]) for r in self.store.epochs().to_pylist()}
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{self.plan.spec.run}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.tick(show=False)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.tick()
            except Exception as error:  # a half-written file or a metrics hiccup must never stop the run
                self.files.append_log(f"[{self.plan.spec.run}] monitor: {type(error).__name__}: {error}")

    def tick(self, show: bool = True) -> None:
        forecast = load_forecast(self.files)
        if forecast is not None and forecast.measured_at != self._forecast_seen:
            self._forecast_seen = forecast.measured_at
            if self.on_forecast is not None:
                self.on_forecast(forecast)
        status = read_status(self.plan.run_dir)
        rows = [r for r in self.store.epoch_rows() if (r["epoch"], r["finished_at"]) not in self._logged_epochs]
        for row in rows:
            self.files.append_log(epoch_line(status.run, status.epochs_total, row))
            self._logged_epochs.add((row["epoch"], row["finished_at"]))
        if rows and self.on_epochs is not None:
            self.on_epochs()
        key = (status.state, status.epochs_done, status.subnets_done)
        if show and key != self._shown:
            self._shown = key
            self.echo(progress_line(status))
        if self._metrics is not None:
            self._metrics.publish(status)
