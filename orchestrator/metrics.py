"""Our own metrics in Ray's metrics system, tagged by run and method, for the dashboard and Prometheus.

The controller publishes them (it is a Ray driver) from the run's status, so they
are the figures `deps-orch status` shows. Ray exports them with its `ray_` prefix
on every node's metrics port (`ray_deps_orch_epoch{run=...,method=...}` and so
on; each value a method reports with its epochs is a gauge of its own name, such as
DepS's `ray_deps_orch_epsilon`), and Ray's dashboard charts them when Prometheus and Grafana are set up for
it. They are gauges: Ray drops them shortly after the controller exits.
"""

from __future__ import annotations

import re

from ray.util.metrics import Gauge

from orchestrator.status import RunStatus

TAGS = ("run", "method")

# name: description; each a gauge tagged by run and method
GAUGES = {
    "deps_orch_epoch": "epochs trained so far",
    "deps_orch_epochs_total": "epochs the run trains in all",
    "deps_orch_images_per_second": "training images per second in the last epoch",
    "deps_orch_device_hours": "device-hours spent so far (training and evaluation)",
    "deps_orch_dollars": "dollars spent so far (training and evaluation)",
    "deps_orch_forecast_dollars": "dollars the whole run will cost: spent so far plus the forecast of the rest",
    "deps_orch_forecast_device_hours": "device-hours the whole run will take: spent plus the forecast of the rest",
    "deps_orch_eta_seconds": "seconds until the run is done, by the forecast and the epochs so far",
    "deps_orch_budget_dollars": "the run's budget.max_dollars",
}
PHASE_GAUGE = "deps_orch_phase"
SCALAR_NAME = re.compile(r"[^a-zA-Z0-9_]")  # 1 for the run's current phase, 0 for the phases it has left behind

_gauges: dict[str, Gauge] = {}  # one per name and process: runs of a comparison share them, told apart by tags


def _gauge(name: str, description: str, tags: tuple[str, ...] = TAGS) -> Gauge:
    if name not in _gauges:
        _gauges[name] = Gauge(name, description=description, tag_keys=tags)
    return _gauges[name]


class RunMetrics:
    def __init__(self, run: str, method: str) -> None:
        self.tags = {"run": run, "method": method}
        self.phases: list[str] = []

    def publish(self, status: RunStatus) -> None:
        values = {
            "deps_orch_epoch": status.epochs_done,
            "deps_orch_epochs_total": status.epochs_total,
            "deps_orch_images_per_second": status.images_per_second,
            "deps_orch_device_hours": status.spent.device_hours,
            "deps_orch_dollars": status.spent.dollars,
            "deps_orch_forecast_dollars": status.forecast_total.dollars if status.forecast_total else None,
            "deps_orch_forecast_device_hours": status.forecast_total.device_hours if status.forecast_total else None,
            "deps_orch_eta_seconds": status.eta_seconds if status.running else None,
            "deps_orch_budget_dollars": status.budget.get("max_dollars"),
        }
        for name, value in values.items():
            if value is not None:
                _gauge(name, GAUGES[name]).set(float(value), tags=self.tags)
        for scalar, value in status.scalars.items():  # the method's own (DepS: deps_orch_epsilon)
            name = f"deps_orch_{SCALAR_NAME.sub('_', scalar)}"
            _gauge(name, f"the method's {scalar} at the last epoch's end").set(float(value), tags=self.tags)
        if status.phase and status.phase not in self.phases:
            self.phases.append(status.phase)
        phase = _gauge(PHASE_GAUGE, "1 for the run's current phase, 0 for earlier ones", (*TAGS, "phase"))
        for name in self.phases:
            phase.set(1.0 if name == status.phase else 0.0, tags={**self.tags, "phase": name})
