"""The cost forecast: a run's work timed on its own workers, extrapolated with the plan.

`orchestrator/profile_job.py` measures a `Profile` (`workers/profiling.py`);
`forecast_from_profile` turns it into seconds, device-hours and dollars per phase,
for evaluation and in total, using the plan's epochs, steps per epoch, devices and
prices. The forecast is kept in `<run_dir>/forecast.json`; a resubmitted run reuses
it as long as nothing that drives its cost changed.

`EpochCostEstimator` joins the forecast with the epochs the ledger already holds:
what the next epoch of a phase will take, and what the rest of the run will cost.
The budget check, `deps-orch status` and the dashboard metrics all use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cost.pricing import price_usage
from orchestrator.storage.run_store import RunStore

if TYPE_CHECKING:
    from orchestrator.plan import Plan
    from workers.profiling import Profile

FORECAST_FILE = "forecast.json"


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
    eval_devices: int  # per evaluation worker
    eval_price_per_device_hour: float
    profile: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def training_seconds(self) -> float:
        return self.training_jobs * self.setup_seconds + sum(p.epochs * p.epoch_seconds for p in self.phases)

    @property
    def training_device_hours(self) -> float:
        return price_usage(self.training_seconds, self.devices, self.price_per_device_hour).device_hours

    @property
    def training_dollars(self) -> float:
        return price_usage(self.training_seconds, self.devices, self.price_per_device_hour).dollars

    @property
    def eval_device_hours(self) -> float:
        return price_usage(self.eval_seconds, self.eval_devices, self.eval_price_per_device_hour).device_hours

    @property
    def eval_dollars(self) -> float:
        return price_usage(self.eval_seconds, self.eval_devices, self.eval_price_per_device_hour).dollars

    @property
    def eval_wall_seconds(self) -> float:
        return self.eval_seconds / max(1, min(self.eval_workers, self.eval_subnets))

    @property
    def total_device_hours(self) -> float:
        return self.training_device_hours + self.eval_device_hours

    @property
    def total_dollars(self) -> float:
        return self.training_dollars + self.eval_dollars

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
        return {
            "measured_on": f"{self.profile.get('world', self.devices)} workers, {self.devices} {self.device_type}",
            "measure_seconds": round(self.measure_seconds, 1),
            "phases": [
                {
                    "phase": p.phase,
                    "epochs": p.epochs,
                    "step_seconds": round(p.step_seconds, 4),
                    "subnets_per_step": p.subnets_per_step,
                    "epoch_seconds": round(p.epoch_seconds, 2),
                    "device_hours": round(p.device_hours, 6),
                    "dollars": round(p.dollars, 6),
                }
                for p in self.phases
            ],
            "setup_seconds": round(self.setup_seconds, 2),
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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["summary"] = self.summary()  # for people reading the file; ignored when loading
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Forecast:
        data = {k: v for k, v in data.items() if k != "summary"}
        data["phases"] = [PhaseForecast(**p) for p in data["phases"]]
        return cls(**data)


def forecast_path(run_dir: Path) -> Path:
    return run_dir / FORECAST_FILE


def load_forecast(run_dir: Path) -> Forecast | None:
    path = forecast_path(run_dir)
    if not path.exists():
        return None
    try:
        return Forecast.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # written by an older version: measured again when the run is next submitted


def save_forecast(run_dir: Path, forecast: Forecast) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = forecast_path(run_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(forecast.to_dict(), indent=2))
    os.replace(tmp, forecast_path(run_dir))


def plan_fingerprint(plan: Plan) -> str:
    """What drives a run's cost: its data, space, method, optimiser, hardware, prices and evaluation.

    Not its budget or storage, so a resumed run with a larger budget keeps its forecast.
    """
    spec = plan.spec
    keys = {
        "dataset": spec.dataset.model_dump(mode="json"),
        "space": spec.space.model_dump(mode="json"),
        "method": spec.method.model_dump(mode="json"),
        "optimizer": spec.optimizer.model_dump(mode="json"),
        "cluster": spec.cluster.model_dump(mode="json"),
        "evaluation": spec.evaluation.model_dump(mode="json"),
        "training_price": plan.training.price.per_device_hour,
        "evaluation_price": plan.evaluation.price.per_device_hour,
        "subnets": [c.subnet_id for c in plan.subnets],
    }
    return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _eval_seconds(plan: Plan, profile: Profile) -> tuple[int, float]:
    """(subnets, their summed calibration + evaluation seconds): a line through the timed subnets' MACs."""
    planned = list(plan.subnets)
    total = int(plan.selection.get("at_most", len(planned))) if isinstance(plan.selection, dict) else len(planned)
    if not planned or not profile.evaluations:
        return total, 0.0
    from workers.supernet.factory import build_space
    from workers.supernet.profile import profile_subnet

    space = build_space(plan.spec)
    points = sorted((e.macs, e.full_seconds) for e in profile.evaluations)
    (m0, s0), (m1, s1) = points[0], points[-1]
    slope = (s1 - s0) / (m1 - m0) if m1 > m0 and s1 >= s0 else 0.0
    base = s0 if slope > 0 else statistics.mean(s for _, s in points)
    per_subnet = [base + slope * (profile_subnet(space, c, plan.dataset.num_classes).macs - m0) for c in planned]
    mean = statistics.mean(per_subnet)
    return total, sum(per_subnet) + mean * max(0, total - len(planned))


def forecast_from_profile(plan: Plan, profile: Profile, measure_seconds: float = 0.0) -> Forecast:
    alloc, steps = plan.training, plan.steps_per_epoch
    timings = {p.phase: p for p in profile.phases}
    phases = []
    for name, first, last in plan.phases:
        timing = timings[name]
        epoch_seconds = steps * timing.median_step_seconds + profile.epoch_fixed_seconds
        epochs = last - first + 1
        usage = price_usage(epochs * epoch_seconds, alloc.devices, alloc.price.per_device_hour)
        phases.append(
            PhaseForecast(
                name,
                first,
                epochs,
                timing.median_step_seconds,
                timing.subnets_per_step,
                epoch_seconds,
                usage.device_hours,
                usage.dollars,
            )
        )
    # The first step of an attempt pays for allocations the later ones reuse: part of its set-up.
    first = profile.phases[0] if profile.phases else None
    first_extra = max(0.0, first.first_step_seconds - first.median_step_seconds) if first is not None else 0.0
    subnets, eval_seconds = _eval_seconds(plan, profile)
    ev = plan.spec.evaluation
    return Forecast(
        run=plan.spec.run,
        method=plan.method,
        fingerprint=plan_fingerprint(plan),
        measured_at=datetime.now(timezone.utc).isoformat(),
        measure_seconds=measure_seconds,
        devices=alloc.devices,
        device_type=alloc.price.device_type,
        price_per_device_hour=alloc.price.per_device_hour,
        steps_per_epoch=steps,
        setup_seconds=profile.setup_seconds + first_extra,
        training_jobs=max(1, len(getattr(plan, "stages", ()) or ())),
        epoch_fixed_seconds=profile.epoch_fixed_seconds,
        phases=phases,
        eval_subnets=subnets,
        eval_seconds=eval_seconds,
        eval_workers=ev.workers,
        eval_devices=plan.evaluation.devices,
        eval_price_per_device_hour=plan.evaluation.price.per_device_hour,
        profile=profile.to_dict(),
    )


def describe_forecast(forecast: Forecast) -> str:
    phases = ", ".join(f"{p.phase} {p.epochs} x {p.epoch_seconds:.1f}s" for p in forecast.phases)
    return (
        f"forecast: {forecast.total_device_hours:.4f} {forecast.device_type}-hours, ${forecast.total_dollars:.4f} "
        f"({phases}; evaluation {forecast.eval_subnets} subnets ${forecast.eval_dollars:.4f}); "
        f"about {forecast.wall_seconds / 60:.1f} min; measured in {forecast.measure_seconds:.0f}s"
    )


@dataclass(frozen=True)
class Spend:
    device_hours: float = 0.0
    dollars: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.device_hours + other.device_hours, self.dollars + other.dollars)

    @classmethod
    def of(cls, seconds: float, devices: int, price_per_device_hour: float) -> Spend:
        """What holding `devices` for `seconds` of wall time costs."""
        usage = price_usage(seconds, devices, price_per_device_hour)
        return cls(usage.device_hours, usage.dollars)


def ledger_spend(epoch_rows: Sequence[dict], subnet_rows: Sequence[dict] = (), lost_rows: Sequence[dict] = ()) -> Spend:
    """What the ledger says a run has spent: its epochs, its evaluated subnets, and work lost to failures."""
    rows = [*epoch_rows, *subnet_rows, *lost_rows]
    return Spend(sum(r["device_hours"] for r in rows), sum(r["dollars"] for r in rows))


def ledger_rows(run_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """The run's epoch, subnet and lost-work rows (the last table only where the store keeps one)."""
    store = RunStore(run_dir)
    lost = store.lost().to_pylist() if hasattr(store, "lost") else []
    return sorted(store.epochs().to_pylist(), key=lambda r: r["epoch"]), store.subnets().to_pylist(), lost


class EpochCostEstimator:
    """What coming epochs will take: the measured epochs of a phase when there are some, else the forecast.

    The forecast of a phase not yet reached is scaled by how far the measured
    epochs strayed from their own forecast (the `ratio`), so a machine that runs
    slower than when it was measured shows up in every later estimate.
    """

    def __init__(self, forecast: Forecast | None, epoch_rows: Sequence[dict]) -> None:
        self.forecast = forecast
        self.rows = sorted(epoch_rows, key=lambda r: r["epoch"])
        last = self.rows[-1] if self.rows else None
        self.devices = forecast.devices if forecast else (last["devices"] if last else 0)
        self.price = forecast.price_per_device_hour if forecast else (last["price_per_device_hour"] if last else 0.0)
        measured = planned = 0.0
        if forecast is not None:
            for row in self.rows:
                expected = forecast.epoch_seconds(row["phase"])
                if expected:
                    measured, planned = measured + row["wall_seconds"], planned + expected
        self.ratio = measured / planned if planned > 0 else None
        overheads = [r["overhead_seconds"] for r in self.rows if r["overhead_seconds"] > 0]
        self.setup_seconds = (
            statistics.mean(overheads) if overheads else (forecast.setup_seconds if forecast is not None else 0.0)
        )

    def epoch_seconds(self, phase: str, cautious: bool = False) -> float | None:
        """Expected wall seconds of an epoch of `phase`; `cautious` takes the slowest plausible figure."""
        recent = [r["wall_seconds"] for r in self.rows if r["phase"] == phase][-3:]
        planned = self.forecast.epoch_seconds(phase) if self.forecast is not None else None
        if planned is not None and self.ratio is not None:
            planned *= self.ratio
        if recent:
            seen = max(recent) if cautious else statistics.mean(recent)
            return max(seen, planned) if cautious and planned is not None else seen
        if planned is not None:
            return planned
        walls = [r["wall_seconds"] for r in self.rows]
        if not walls:
            return None
        return max(walls) if cautious else statistics.mean(walls)

    def cost(self, seconds: float) -> Spend:
        return Spend.of(seconds, self.devices, self.price)


@dataclass(frozen=True)
class Outlook:
    """A run's spend so far, and what the rest will take by the forecast and the epochs measured so far."""

    spent: Spend
    epochs_done: int
    epochs_total: int
    remaining: Spend
    remaining_seconds: float | None  # wall, training and evaluation; None without any estimate

    @property
    def total(self) -> Spend:
        return self.spent + self.remaining


def outlook(
    forecast: Forecast | None,
    phases: Sequence[tuple[str, int, int]],
    epoch_rows: Sequence[dict],
    subnet_rows: Sequence[dict] = (),
    job_starts: Sequence[int] = (),
    running: bool = False,
    lost_rows: Sequence[dict] = (),
) -> Outlook:
    """`phases` are (phase, first epoch, last epoch); `job_starts` the first epochs of the training jobs.

    A run that is not running now pays one more set-up when it resumes.
    """
    estimator = EpochCostEstimator(forecast, epoch_rows)
    done = {r["epoch"] for r in epoch_rows}
    total_epochs = max((last + 1 for _, _, last in phases), default=len(done))
    seconds: float | None = 0.0
    for name, first, last in phases:
        left = sum(1 for e in range(first, last + 1) if e not in done)
        if left:
            per_epoch = estimator.epoch_seconds(name)
            seconds = None if per_epoch is None or seconds is None else seconds + left * per_epoch
    next_epoch = min((e for e in range(total_epochs) if e not in done), default=None)
    setups = 0
    if next_epoch is not None:
        setups = (0 if running else 1) + sum(1 for start in job_starts if start > next_epoch)
    train_seconds = None if seconds is None else seconds + setups * estimator.setup_seconds
    remaining = estimator.cost(train_seconds or 0.0)
    eval_wall = 0.0
    if forecast is not None and forecast.eval_subnets:
        left = max(0, forecast.eval_subnets - len(subnet_rows))
        per_subnet = forecast.eval_seconds / forecast.eval_subnets
        remaining = remaining + Spend.of(left * per_subnet, forecast.eval_devices, forecast.eval_price_per_device_hour)
        eval_wall = left * per_subnet / max(1, min(forecast.eval_workers, left or 1))
    return Outlook(
        spent=ledger_spend(epoch_rows, subnet_rows, lost_rows),
        epochs_done=len(done),
        epochs_total=total_epochs,
        remaining=remaining,
        remaining_seconds=None if train_seconds is None else train_seconds + eval_wall,
    )
