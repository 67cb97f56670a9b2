"""The `dataset` section of a job spec: which data, where, at what resolution and in what batches."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from workers.sections import Section


class DatasetSpec(Section):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: Path | None = None
    resolution: int = Field(32, ge=8, le=1024)
    train_subset: int | None = Field(None, gt=0, description="use only the first N training images")
    test_subset: int | None = Field(None, gt=0, description="use only the first N test images")
    batch_size: int = Field(64, gt=0, description="images per worker per step")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    persistent_workers: bool = Field(True, description="keep loader workers between epochs (with loader_workers)")
    prefetch_factor: int | None = Field(None, ge=1, description="batches each loader worker prepares; default 2")
    index: Path | None = Field(
        None, description="an ImageFolder's index of files; set by the planner to the run's own (image_index.parquet)"
    )
    auto_augment: bool = False

    @model_validator(mode="after")
    def _root_given(self) -> DatasetSpec:
        if self.name != "digits" and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs dataset.root")
        return self
