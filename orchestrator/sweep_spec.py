"""The `sweep:` section of a job spec: which spec fields vary, how trials are chosen, scheduled and capped.

    sweep:
      parameters:
        method.warmup_fraction: {grid: [0, 0.25, 0.5, 0.75]}
        optimizer.lr: {loguniform: [0.01, 0.3]}
      num_samples: 1
      metric: val_top1          # reported by every trial at each epoch end
      mode: max
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
      max_concurrent: 2
      budget: {max_dollars: 40}   # the whole sweep: no trial starts or goes on past it

Grid values multiply; the random distributions are drawn for every trial, from the
spec's seed, so submitting the sweep again names the same trials.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from workers.sections import Section

METRICS = ("val_top1", "val_top1_smallest", "loss")


class Distribution(Section):
    """Exactly one of: a grid (every value, in every combination), a choice, a uniform or log-uniform range."""

    grid: tuple[float | int | str | bool, ...] | None = Field(None, min_length=1)
    choice: tuple[float | int | str | bool, ...] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give one of grid, choice, uniform, loguniform (got {', '.join(given) or 'none'})")
        for kind in ("uniform", "loguniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: [{bounds[0]}, {bounds[1]}] needs low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: the bounds must be positive")
        return self


class SchedulerSpec(Section):
    """Early stopping of trials by the metric: Ray Tune's ASHA or median stopping rule, or none."""

    name: Literal["none", "asha", "median"] = "none"
    grace_period: int = Field(1, ge=1, description="epochs every trial trains before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1.0, description="asha: 1 / the fraction kept at each rung")
    min_samples_required: int = Field(2, ge=1, description="median: trials to compare with before stopping one")


class SweepBudget(Section):
    """A cap on the whole sweep, shared by its trials through the run budget's guard (`BudgetPool`)."""

    max_dollars: float | None = Field(None, gt=0)
    max_device_hours: float | None = Field(None, gt=0)

    @property
    def limited(self) -> bool:
        return self.max_dollars is not None or self.max_device_hours is not None


class SweepSpec(Section):
    parameters: dict[str, Distribution] = Field(min_length=1, description="dotted spec paths: what varies")
    num_samples: int = Field(1, ge=1, description="repeats of the grid; random distributions drawn anew each")
    metric: Literal["val_top1", "val_top1_smallest", "loss"] = "val_top1"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerSpec = SchedulerSpec()
    max_concurrent: int | None = Field(None, ge=1, description="default: as many trials as the cluster fits")
    validation_images: int = Field(256, gt=0, description="test images of the per-epoch metric")
    budget: SweepBudget = SweepBudget()
