"""The `optimizer` section of a job spec (the optimiser and schedule it builds: `workers/optim.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.sections import Section


class OptimizerSpec(Section):
    name: Literal["sgd", "rmsprop"] = "sgd"
    lr: float = Field(0.1, gt=0.0, description="learning rate per `lr_batch` images; scaled to the global batch")
    lr_batch: int = Field(128, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = Field(True, description="SGD only")
    rmsprop_decay: float = Field(0.9, gt=0.0, lt=1.0, description="RMSProp's squared-gradient average (torch alpha)")
    rmsprop_eps: float = Field(1e-3, gt=0.0, description="RMSProp's epsilon, added to the root (torch convention)")
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay_on_bn_and_bias: bool = True
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lr_floor: float = Field(2.5e-3, ge=0.0, description="the cosine schedule never goes below this LR")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear LR warmup at the start of the run")
    grad_clip_norm: float | None = Field(None, gt=0.0)
