"""The forecast record: what a run's training and evaluation will take, kept in `<run_dir>/forecast.json`.

It is measured on the run's own workers (`workers/forecast_model.py` turns a
measured profile into it) and read by the budget, `deps-orch status`, the metrics
and `cost-report`. A resubmitted run reuses it as long as its fingerprint, a hash
of everything that drives cost, is unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.rundir.layout import RunDir, as_run_dir
from workers.rundir.pricing import Usage


@dataclass(frozen=True)
class PhaseForecast:
    phase: str
    first_epoch: int
    epochs: int
    step_seconds: float
    subnets_per_step: float
    epoch_seconds: float
    device_hours: float
    dollars: float


@dataclass(frozen=True)
class Forecast:
    run: str
    method: str
    fingerprint: str
    measured_at: str
    measure_seconds: float  # how long measuring took
    devices: int
    device_type: str
    price_per_device_hour: float
    steps_per_epoch: int
    setup_seconds: float  # paid by every training job (one per stage of the method)
    training_jobs: int
    epoch_fixed_seconds: float
    phases: list[PhaseForecast]
    eval_subnets: int
    eval_seconds: float  # calibration + evaluation of all subnets, summed over workers
    eval_workers: int
    eval_devices: float  # the run's held devices per evaluation worker (at least the worker's own)
    eval_price_per_device_hour: float
    profile: dict = field(default_factory=dict)
    measured_in_run: bool = False  # measured inside the run's first training job: its time is part of that job
    # Held time besides the work's own, every second of it at every held device:
    startup_seconds: float = 0.0  # the devices held until the training workers begin their set-up
    diagnostics_seconds: float = 0.0  # the run's diagnostics in all
    eval_setup_seconds: float = 0.0  # the evaluation workers' start

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def training_seconds(self) -> float:
        measuring = self.measure_seconds if self.measured_in_run else 0.0
        return (
            self.startup_seconds
            + self.training_jobs * self.setup_seconds
            + measuring
            + sum(p.epochs * p.epoch_seconds for p in self.phases)
            + self.diagnostics_seconds
        )

    @property
    def training(self) -> Usage:
        return Usage.of(self.training_seconds, self.devices, self.price_per_device_hour)

    @property
    def evaluation(self) -> Usage:
        setup = Usage.of(self.eval_setup_seconds, max(self.devices, self.eval_devices), self.eval_price_per_device_hour)
        return setup + Usage.of(self.eval_seconds, self.eval_devices, self.eval_price_per_device_hour)

    @property
    def total(self) -> Usage:
        return self.training + self.evaluation

    @property
    def training_device_hours(self) -> float:
        return self.training.device_hours

    @property
    def training_dollars(self) -> float:
        return self.training.dollars

    @property
    def eval_device_hours(self) -> float:
        return self.evaluation.device_hours

    @property
    def eval_dollars(self) -> float:
        return self.evaluation.dollars

    @property
    def total_device_hours(self) -> float:
        return self.total.device_hours

    @property
    def total_dollars(self) -> float:
        return self.total.dollars

    @property
    def eval_wall_seconds(self) -> float:
        return self.eval_setup_seconds + self.eval_seconds / max(1, min(self.eval_workers, self.eval_subnets))

    @property
    def wall_seconds(self) -> float:
        return self.training_seconds + self.eval_wall_seconds

    @property
    def first_step_seconds(self) -> float:
        """The slowest first step measured (a job's, or a phase's: DDP's first pass, new kernels); 0 if unknown."""
        phases = self.profile.get("phases") or []
        return max((p.get("first_step_seconds", 0.0) for p in phases), default=0.0)

    def phase_of(self, name: str) -> PhaseForecast | None:
        return next((p for p in self.phases if p.phase == name), None)

    def epoch_seconds(self, phase: str) -> float | None:
        found = self.phase_of(phase)
        return found.epoch_seconds if found is not None else None

    def summary(self) -> dict:
        """The forecast as `submit --dry-run` prints it and plan readers see it."""
        reused = {p["phase"]: p.get("reused_from", "") for p in self.profile.get("phases", [])}
        return {
            "measured_on": f"{self.profile.get('world', self.devices)} workers, {self.devices} {self.device_type}",
            "measure_seconds": round(self.measure_seconds, 1),
            "phases": [
                {
                    "phase": p.phase,
                    "epochs": p.epochs,
                    "step_seconds": round(p.step_seconds, 4),
                    "timed": f"as {reused[p.phase]}" if reused.get(p.phase) else "here",
                    "subnets_per_step": p.subnets_per_step,
                    "epoch_seconds": round(p.epoch_seconds, 2),
                    "device_hours": round(p.device_hours, 6),
                    "dollars": round(p.dollars, 6),
                }
                for p in self.phases
            ],
            "setup_seconds": round(self.setup_seconds, 2),
            "overhead_seconds": {
                "startup": round(self.startup_seconds, 1),
                "diagnostics": round(self.diagnostics_seconds, 1),
                "evaluation_setup": round(self.eval_setup_seconds, 1),
            },
            "training": {
                "device_hours": round(self.training_device_hours, 6),
                "dollars": round(self.training_dollars, 6),
                "wall_seconds": round(self.training_seconds, 1),
            },
            "evaluation": {
                "subnets": self.eval_subnets,
                "device_hours": round(self.eval_device_hours, 6),
                "dollars": round(self.eval_dollars, 6),
                "wall_seconds": round(self.eval_wall_seconds, 1),
            },
            "total": {
                "device_hours": round(self.total_device_hours, 6),
                "dollars": round(self.total_dollars, 6),
                "wall_seconds": round(self.wall_seconds, 1),
            },
        }

    def describe(self) -> str:
        """One line for the console and the run's log."""
        phases = ", ".join(f"{p.phase} {p.epochs} x {p.epoch_seconds:.1f}s" for p in self.phases)
        return (
            f"forecast: {self.total_device_hours:.4f} {self.device_type}-hours, ${self.total_dollars:.4f} "
            f"({phases}; evaluation {self.eval_subnets} subnets ${self.eval_dollars:.4f}); "
            f"about {self.wall_seconds / 60:.1f} min; measured in {self.measure_seconds:.0f}s"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["summary"] = self.summary()  # for people reading the file; ignored when loading
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Forecast:
        data = {k: v for k, v in data.items() if k != "summary"}
        data["phases"] = [PhaseForecast(**p) for p in data["phases"]]
        return cls(**data)


def load_forecast(run_dir: Path | RunDir) -> Forecast | None:
    files = as_run_dir(run_dir)
    data = files.read_json(files.forecast)
    if not isinstance(data, dict):
        return None
    try:
        return Forecast.from_dict(data)
    except (ValueError, KeyError, TypeError):
        return None  # written by an older version: measured again when the run is next submitted


def save_forecast(run_dir: Path | RunDir, forecast: Forecast) -> None:
    files = as_run_dir(run_dir)
    files.write_json(files.forecast, forecast.to_dict())
