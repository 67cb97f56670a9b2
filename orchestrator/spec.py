"""The job spec: YAML validated by pydantic models that reject unknown keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.methods import AnyMethodConfig

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Section):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: Path | None = None
    resolution: int = Field(32, ge=8, le=1024)
    train_subset: int | None = Field(None, gt=0, description="use only the first N training images")
    test_subset: int | None = Field(None, gt=0, description="use only the first N test images")
    batch_size: int = Field(64, gt=0, description="images per worker per step")
    loader_workers: int = Field(0, ge=0)
    auto_augment: bool = False

    @model_validator(mode="after")
    def _root_given(self) -> DatasetSpec:
        if self.name != "digits" and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs dataset.root")
        return self


class SpaceSpec(Section):
    name: Literal["ofa_mobilenetv3"] = "ofa_mobilenetv3"
    kernel_choices: tuple[Literal[3, 5, 7], ...] = (3, 5, 7)
    expand_choices: tuple[float, ...] = (3, 4, 6)
    depth_choices: tuple[Literal[1, 2, 3, 4], ...] = (2, 3, 4)
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    cifar_variant: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.01, gt=0.0, le=1.0)

    @field_validator("kernel_choices", "expand_choices", "depth_choices")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("needs at least one choice")
        if len(set(value)) != len(value):
            raise ValueError(f"repeated choice in {list(value)}")
        return tuple(sorted(value))

    @field_validator("expand_choices")
    @classmethod
    def _positive_expand(cls, value: tuple) -> tuple:
        if any(e <= 0 for e in value):
            raise ValueError("expand ratios must be positive")
        return value


class OptimizerSpec(Section):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0.0, description="learning rate per `lr_batch` images; scaled to the global batch")
    lr_batch: int = Field(128, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay_on_bn_and_bias: bool = True
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lr_floor: float = Field(2.5e-3, ge=0.0, description="the cosine schedule never goes below this LR")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear LR warmup at the start of the run")
    grad_clip_norm: float | None = Field(None, gt=0.0)


class ClusterSpec(Section):
    backend: Literal["local"] = "local"
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)
    accelerator: str | None = Field(None, description="device type for GPU runs, e.g. A40")
    max_failures: int = Field(3, ge=0, description="worker-group restarts Ray Train may make")

    @model_validator(mode="after")
    def _accelerator_named(self) -> ClusterSpec:
        if self.gpus_per_worker > 0 and not self.accelerator:
            raise ValueError("cluster.accelerator must name the GPU type when gpus_per_worker > 0")
        return self

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CostSpec(Section):
    pricing: Literal["on_demand", "spot"] = "on_demand"
    price_per_device_hour: float | None = Field(None, ge=0.0, description="overrides the catalog")
    catalog: Path | None = Field(None, description="a price catalog YAML replacing the shipped one")


class EvaluationSpec(Section):
    subnets: int = Field(6, ge=0, description="subnets besides the smallest and largest, spread over the MAC range")
    calibration_images: int = Field(2000, gt=0)
    calibration_batch_size: int = Field(200, gt=0)
    test_batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=1, description="parallel calibration/evaluation actors")
    cpus_per_worker: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)


class StorageSpec(Section):
    root: Path = Path("runs")


class JobSpec(Section):
    run: str
    seed: int = 0
    dataset: DatasetSpec = DatasetSpec()
    space: SpaceSpec = SpaceSpec()
    method: AnyMethodConfig
    optimizer: OptimizerSpec = OptimizerSpec()
    cluster: ClusterSpec = ClusterSpec()
    cost: CostSpec = CostSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    storage: StorageSpec = StorageSpec()

    @field_validator("run")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        if not RUN_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a run name: letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return value
