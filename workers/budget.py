"""The budget check: would the ledger plus the next piece of work pass `budget.max_dollars` or `max_device_hours`?

The next epoch's cost is the cautious estimate of `EpochCostEstimator`: the
slowest of the phase's last epochs, or the forecast scaled by how far the
measured epochs strayed from it, whichever is larger; plus a set-up when the
epoch starts a new training job, and half a step for the margin the step guard
keeps (`workers/epoch_guard.py`), so an epoch that keeps to its estimate is not
stopped at its last step. Evaluation is checked against its forecast
before it starts. The same function decides for the workers (at each epoch end)
and for the controller (before training and before evaluation), so the answer
does not depend on who asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.forecast import EpochCostEstimator, Spend, ledger_rows, ledger_spend, load_forecast

if TYPE_CHECKING:
    from orchestrator.spec import BudgetSpec

# The slowest step seen so far is not the slowest there will be: the subnets drawn change every
# step (a sandwich step with a large random subnet costs up to twice one with a small one) and a
# busy node stalls. So the step guard reserves half as much again as the slowest step seen.
STEP_MARGIN = 1.5


def budget_verdict(budget: BudgetSpec, spent: Spend, coming: Spend, what: str) -> str | None:
    """Why `coming` must not start (one line), or None if the budget allows it."""
    if budget.max_dollars is not None and spent.dollars + coming.dollars > budget.max_dollars:
        return (
            f"budget: ${spent.dollars:.4f} spent + ${coming.dollars:.4f} forecast for {what} "
            f"would pass budget.max_dollars ${budget.max_dollars:.4f}"
        )
    if budget.max_device_hours is not None and spent.device_hours + coming.device_hours > budget.max_device_hours:
        return (
            f"budget: {spent.device_hours:.4f} device-hours spent + {coming.device_hours:.4f} forecast for {what} "
            f"would pass budget.max_device_hours {budget.max_device_hours:.4f}"
        )
    return None


def check_epoch(budget: BudgetSpec, run_dir: Path, epoch: int, phase: str, new_job: bool) -> str | None:
    """May epoch `epoch` (of `phase`) start? `new_job`: it starts a training job, which pays its set-up first."""
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
    spent = ledger_spend(epochs, subnets, lost)
    return budget_verdict(budget, spent, estimator.cost(seconds), f"epoch {epoch + 1} ({phase})")


def check_evaluation(budget: BudgetSpec, run_dir: Path, subnets_left: int) -> str | None:
    """May the evaluation of `subnets_left` subnets start?"""
    forecast = load_forecast(run_dir)
    if not budget.limited or forecast is None or subnets_left == 0 or forecast.eval_subnets == 0:
        return None
    seconds = forecast.eval_seconds * subnets_left / forecast.eval_subnets
    coming = Spend.of(seconds, forecast.eval_devices, forecast.eval_price_per_device_hour)
    return budget_verdict(budget, ledger_spend(*ledger_rows(run_dir)), coming, f"evaluating {subnets_left} subnets")
