"""The budget: limits on a run's spend, and the check of whether the next piece of work still fits under them.

The next epoch's cost is the cautious estimate of `EpochCostEstimator`: the
slowest of the phase's last epochs, or the forecast scaled by how far the
measured epochs strayed from it, whichever is larger; plus a set-up when the
epoch starts a new training job, and half a step for the margin the step guard
keeps (`workers/epoch_guard.py`), so an epoch that keeps to its estimate is not
stopped at its last step. Evaluation is checked against its forecast before it
starts. The same functions decide for the workers (at each epoch end) and for
the controller (before training and before evaluation), so the answer does not
depend on who asks.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from workers.rundir.estimator import EpochCostEstimator, ledger_rows, ledger_spend
from workers.rundir.forecast import load_forecast
from workers.rundir.layout import RunDir
from workers.rundir.pricing import Usage

# The slowest step seen so far is not the slowest there will be: the subnets drawn change every
# step (a sandwich step with a large random subnet costs up to twice one with a small one) and a
# busy node stalls. So the step guard reserves half as much again as the slowest step seen.
STEP_MARGIN = 1.5


class BudgetPool(BaseModel):
    """A cap shared by several runs (a sweep's trials): what all of them spent, plus what the next piece of work
    of each one running at once would cost, must stay under it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # what the cap belongs to, for the messages: "sweep.budget"
    max_dollars: float | None = Field(None, gt=0.0)
    max_device_hours: float | None = Field(None, gt=0.0)
    members: tuple[str, ...]  # every sharing run's directory
    own: str  # this run's directory (its spend is the caller's `spent`, with what is not in the ledger yet)
    concurrent: int = Field(1, ge=1, description="runs that may be working at once: each reserves alike")

    def others_spent(self) -> Usage:
        return Usage.total(
            [row for member in self.members if member != self.own for rows in ledger_rows(Path(member)) for row in rows]
        )


class BudgetSpec(BaseModel):
    """Limits on a run's spend (training and evaluation); the run stops cleanly before it would pass them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_dollars: float | None = Field(None, gt=0.0)
    max_device_hours: float | None = Field(None, gt=0.0, description="GPU-hours, or vCPU-hours for CPU runs")
    check_every_steps: int = Field(
        8, ge=1, description="steps between the in-epoch checks (each one a broadcast); each reserves that many steps"
    )
    pool: BudgetPool | None = Field(None, description="set by a sweep: the cap its trials share")

    @property
    def limited(self) -> bool:
        return self.max_dollars is not None or self.max_device_hours is not None or self.pool is not None


def _over(
    max_dollars: float | None, max_device_hours: float | None, spent: Usage, coming: Usage, what: str, name: str
) -> str | None:
    if max_dollars is not None and spent.dollars + coming.dollars > max_dollars:
        return (
            f"budget: ${spent.dollars:.4f} spent + ${coming.dollars:.4f} forecast for {what} "
            f"would pass {name}.max_dollars ${max_dollars:.4f}"
        )
    if max_device_hours is not None and spent.device_hours + coming.device_hours > max_device_hours:
        return (
            f"budget: {spent.device_hours:.4f} device-hours spent + {coming.device_hours:.4f} forecast for {what} "
            f"would pass {name}.max_device_hours {max_device_hours:.4f}"
        )
    return None


def budget_verdict(budget: BudgetSpec, spent: Usage, coming: Usage, what: str) -> str | None:
    """Why `coming` must not start (one line), or None if the budget (and the pool it shares) allows it."""
    verdict = _over(budget.max_dollars, budget.max_device_hours, spent, coming, what, "budget")
    pool = budget.pool
    if verdict is not None or pool is None:
        return verdict
    reserve = Usage(coming.device_hours * pool.concurrent, coming.dollars * pool.concurrent)
    more = f"{what}, and as much for each of {pool.concurrent} at once" if pool.concurrent > 1 else what
    return _over(pool.max_dollars, pool.max_device_hours, spent + pool.others_spent(), reserve, more, pool.name)


def check_epoch(
    budget: BudgetSpec,
    run_dir: Path | RunDir,
    epoch: int,
    phase: str,
    new_job: bool,
    in_flight: Usage | None = None,
) -> str | None:
    """May epoch `epoch` (of `phase`) start? `new_job`: it starts a training job, which pays its set-up first.

    `in_flight`: what has been spent and is not in the ledger yet (a job's set-up before its first epoch).
    """
    if not budget.limited:
        return None
    epochs, subnets, lost = ledger_rows(run_dir)
    estimator = EpochCostEstimator(load_forecast(run_dir), epochs)
    seconds = estimator.epoch_seconds(phase, cautious=True) or 0.0
    steps = estimator.forecast.steps_per_epoch if estimator.forecast is not None else 0
    if steps:
        seconds += (STEP_MARGIN - 1) * seconds / steps
    if new_job:
        seconds += estimator.setup_seconds
    spent = ledger_spend(epochs, subnets, lost) + (in_flight or Usage())
    return budget_verdict(budget, spent, estimator.cost(seconds), f"epoch {epoch + 1} ({phase})")


def check_evaluation(budget: BudgetSpec, run_dir: Path | RunDir, subnets_left: int) -> str | None:
    """May the evaluation of `subnets_left` subnets start?"""
    forecast = load_forecast(run_dir)
    if not budget.limited or forecast is None or subnets_left == 0 or forecast.eval_subnets == 0:
        return None
    seconds = forecast.eval_seconds * subnets_left / forecast.eval_subnets
    coming = Usage.of(seconds, forecast.eval_devices, forecast.eval_price_per_device_hour) + Usage.of(
        forecast.eval_setup_seconds, max(forecast.devices, forecast.eval_devices), forecast.eval_price_per_device_hour
    )  # and the evaluation workers' start, while every held device waits
    return budget_verdict(budget, ledger_spend(*ledger_rows(run_dir)), coming, f"evaluating {subnets_left} subnets")
