"""The method interface: a method decides its stages, and per epoch and step which subnets train and how.

A run is a sequence of **stages** (most methods have one; OFA's progressive
shrinking has a teacher stage and one per phase). The controller runs the stages
in order, each starting from the previous stage's final weights; epochs are
numbered globally across stages. Within a stage the training loop asks the method
for the `SubnetStep`s of each minibatch, runs them in order (accumulating
gradients), and records the method's phase and scalars in the ledger. A method
never touches the optimiser or the data; it shapes training through its stages
(LR, warmup, the frozen teacher), its LR ending, its initialisation and its
distillation loss.

A method module loads without torch (its config is part of the job spec, which
every CLI command checks first): what it needs of torch it reaches through the
network it is handed, and it names its distillation loss as settings
(`Distillation`) that the workers build.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from workers.distillation_spec import Distillation, DivergenceConfig, KLConfig
from workers.supernet.space import SearchSpace, SubnetConfig

if TYPE_CHECKING:  # the type alone: see above
    from workers.supernet.supernet import ElasticSupernet


class Target(str, Enum):
    LABELS = "labels"  # cross-entropy with the (smoothed) labels
    INPLACE_KD = "inplace_kd"  # distil from this step's teacher output (an earlier step of the minibatch), detached
    LABELS_AND_KD = "labels_and_kd"  # cross-entropy + kd_weight x distillation from the stage's frozen teacher


@dataclass(frozen=True)
class SubnetStep:
    config: SubnetConfig
    target: Target
    grad_weight: float
    dropout: bool
    is_teacher: bool = False  # its output becomes the in-place teacher of later steps
    kd_weight: float = 1.0  # LABELS_AND_KD: weight of the distillation term


@dataclass(frozen=True)
class Stage:
    """One part of a run that the controller runs as its own training job.

    `lr` is per `lr_batch` images and scaled to the global batch; None keeps the
    spec's optimizer settings. `teacher` names an earlier stage whose final weights
    (largest subnet, eval mode, frozen) are the teacher of LABELS_AND_KD steps.
    """

    name: str
    epochs: int
    first_epoch: int
    space: SearchSpace  # the choices this stage samples from
    subnets_per_step: int
    lr: float | None = None
    lr_batch: int | None = None
    warmup_epochs: float | None = None
    lr_floor: float | None = None  # the cosine's end; None keeps the spec's optimizer.lr_floor
    teacher: str | None = None

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.epochs

    def describe(self) -> dict:
        return {
            "stage": self.name,
            "first_epoch": self.first_epoch,
            "last_epoch": self.end_epoch - 1,
            "subnets_per_step": self.subnets_per_step,
            "lr": "optimizer" if self.lr is None else f"{self.lr:g} per {self.lr_batch} images",
            "warmup_epochs": "optimizer" if self.warmup_epochs is None else self.warmup_epochs,
            "lr_floor": "optimizer" if self.lr_floor is None else self.lr_floor,
            "teacher": self.teacher,
            "space": self.space.choices(),
        }


def chain_stages(specs: list[dict]) -> tuple[Stage, ...]:
    """Stages from their settings in order, numbering epochs globally; stages of 0 epochs are left out."""
    stages, first = [], 0
    for spec in specs:
        if spec["epochs"] > 0:
            stages.append(Stage(first_epoch=first, **spec))
            first += spec["epochs"]
    return tuple(stages)


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def run_label(self) -> str:
        """The suffix of this method's run in a multi-method spec: `<run>-<label>`."""
        return self.name  # type: ignore[attr-defined]


class TrainingMethod(ABC):
    name: ClassVar[str]
    config_model: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, space: SearchSpace, seed: int = 0) -> None:
        self.config = config
        self.space = space
        self.seed = seed

    @property
    def search_space(self) -> SearchSpace:
        """The space the trained supernet serves: evaluation picks its subnets from here."""
        return self.space

    def stages(self) -> tuple[Stage, ...]:
        """The run's stages in order. One stage over the whole space unless a method says otherwise."""
        per_step = getattr(self.config, "subnets_per_step", 1)
        only = {
            "name": self.name,
            "epochs": self.config.epochs,
            "space": self.search_space,
            "subnets_per_step": per_step,
        }
        return chain_stages([only])

    @property
    def epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages())

    def stage_of(self, epoch: int) -> Stage:
        for stage in self.stages():
            if stage.first_epoch <= epoch < stage.end_epoch:
                return stage
        raise ValueError(f"epoch {epoch} is outside the method's {self.epochs} epochs")

    def phase(self, epoch: int) -> str:
        """The ledger's phase tag for an epoch: by default the stage's name."""
        return self.stage_of(epoch).name

    @abstractmethod
    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        """The subnets of one minibatch, in the order they run. `rng` is shared by all ranks."""

    def scalars(self, epoch: int, step: int, steps_per_epoch: int) -> dict[str, float]:
        """Method-specific values recorded with each epoch (for example DepS's ε)."""
        return {}

    def distillation(self) -> Distillation:
        """The loss of INPLACE_KD and LABELS_AND_KD steps."""
        return Distillation()

    def lr_constant_ending(self) -> float | None:
        """If set, the cosine schedule decays towards 0 but holds once it reaches this fraction of the initial LR."""
        return None

    def init_weights(self, net: ElasticSupernet) -> None:  # noqa: B027 (a hook: most methods keep PyTorch's init)
        """Called once on a freshly built supernet, before any training (not on resume or a later stage)."""


class DistillingConfig(MethodConfig):
    """Settings every method that distils shares: the divergence and its temperature."""

    kd_temperature: float = Field(1.0, gt=0.0, description="softmax temperature of teacher and student (loss x T²)")
    teacher_divergence: DivergenceConfig = KLConfig()


class DistillingMethod(TrainingMethod, ABC):
    config: DistillingConfig

    def distillation(self) -> Distillation:
        return Distillation(self.config.teacher_divergence, self.config.kd_temperature)
