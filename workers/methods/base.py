"""The method interface: a method decides, per epoch and step, which subnets train and how.

The training loop is method-agnostic: it asks the method for the `SubnetStep`s of
each minibatch, runs them in order (accumulating gradients), and records the
method's scalars in the ledger. A method never touches the optimiser or the data.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from workers.supernet.space import SearchSpace, SubnetConfig


class Target(str, Enum):
    LABELS = "labels"  # cross-entropy with the (smoothed) labels
    INPLACE_KD = "inplace_kd"  # distil from this step's full-model output, detached


@dataclass(frozen=True)
class SubnetStep:
    config: SubnetConfig
    target: Target
    grad_weight: float
    dropout: bool
    is_teacher: bool = False  # its output becomes the in-place teacher of later steps


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int


class TrainingMethod(ABC):
    name: ClassVar[str]
    config_model: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, space: SearchSpace) -> None:
        self.config = config
        self.space = space

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @abstractmethod
    def phase(self, epoch: int) -> str:
        """The ledger's phase tag for an epoch."""

    @abstractmethod
    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        """The subnets of one minibatch, in the order they run. `rng` is shared by all ranks."""

    def scalars(self, epoch: int, step: int, steps_per_epoch: int) -> dict[str, float]:
        """Method-specific values recorded with each epoch (for example DepS's ε)."""
        return {}

    def kd_temperature(self) -> float:
        return 1.0
