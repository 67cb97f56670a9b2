"""Progressive shrinking: OFA and CompOFA.

Both first train the full model alone (the teacher stage), then run phases that
each open more of the space, start from the previous phase's weights, and train
randomly sampled subnets with CE(labels) + kd_weight x distillation from the frozen
trained teacher ("vanilla KD"). Each phase has its own epochs, LR (per
`phase_lr_batch` images, scaled to the global batch), warmup and subnets per step;
its cosine decays to 0. Every phase is a stage: the controller runs it as its own
training job, and the ledger tags its epochs with the phase's name.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.methods.base import DistillingConfig, DistillingMethod, Stage, SubnetStep, Target, chain_stages
from workers.supernet.space import SearchSpace

TEACHER = "teacher"


class PhaseSettings(BaseModel):
    """A phase as the OFA code defines it: `warmup_epochs` of linear warmup come on top of `epochs` of cosine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(ge=0, description="epochs of cosine decay; 0 leaves the phase out")
    lr: float = Field(gt=0.0, description="initial LR per `phase_lr_batch` images")
    subnets_per_step: int = Field(ge=1)
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warmup before the cosine, added to `epochs`")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.warmup_epochs if self.epochs else 0


class ProgressiveConfig(DistillingConfig):
    teacher_epochs: int = Field(180, gt=0, description="epochs of the full model alone, before any phase")
    teacher_lr: float | None = Field(None, gt=0.0, description="None: optimizer.lr per optimizer.lr_batch")
    phase_lr_batch: int = Field(64, gt=0, description="the phases' LRs are per this many images (OFA: 64 per GPU)")
    kd_weight: float = Field(1.0, ge=0.0, description="loss = CE(labels) + kd_weight x distillation from the teacher")
    subnet_dropout: bool = Field(True, description="dropout on the sampled subnets too (the OFA code's default)")

    @model_validator(mode="before")
    @classmethod
    def _phase_overrides(cls, data: object) -> object:
        """A phase given in part (`depth2: {epochs: 10}`) keeps the paper's value for the rest."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(field.default, PhaseSettings) and isinstance(merged.get(name), dict):
                merged[name] = {**field.default.model_dump(), **merged[name]}
        return merged


class ProgressiveShrinking(DistillingMethod):
    config: ProgressiveConfig

    def phases(self) -> list[tuple[str, PhaseSettings, SearchSpace]]:
        """The phases after the teacher: name, settings and the space each opens."""
        raise NotImplementedError

    def stages(self) -> tuple[Stage, ...]:
        cfg = self.config
        teacher_space = self.search_space.restricted(
            kernels=[self.search_space.max_kernel],
            expands=[self.search_space.max_expand],
            depths=[max(self.search_space.depth_choices)],
        )
        specs: list[dict] = [
            {"name": TEACHER, "epochs": cfg.teacher_epochs, "space": teacher_space, "subnets_per_step": 1}
        ]
        if cfg.teacher_lr is not None:
            specs[0].update(lr=cfg.teacher_lr, lr_batch=cfg.phase_lr_batch)
        for name, phase, space in self.phases():
            specs.append(
                {
                    "name": name,
                    "epochs": phase.total_epochs,
                    "space": space,
                    "subnets_per_step": phase.subnets_per_step,
                    "lr": phase.lr,
                    "lr_batch": cfg.phase_lr_batch,
                    "warmup_epochs": phase.warmup_epochs,
                    "lr_floor": 0.0,
                    "teacher": TEACHER,
                }
            )
        return chain_stages(specs)

    def steps(self, epoch: int, step: int, steps_per_epoch: int, rng: random.Random) -> list[SubnetStep]:
        stage = self.stage_of(epoch)
        if stage.name == TEACHER:
            return [SubnetStep(stage.space.largest(), Target.LABELS, 1.0, dropout=True)]
        return [
            SubnetStep(
                stage.space.sample(rng),
                Target.LABELS_AND_KD,
                1.0,
                dropout=self.config.subnet_dropout,
                kd_weight=self.config.kd_weight,
            )
            for _ in range(stage.subnets_per_step)
        ]


class OFAConfig(ProgressiveConfig):
    name: Literal["ofa"] = "ofa"
    # The OFA paper's table; the OFA code adds 5 warmup epochs to the 120-epoch phases (180 + 425 = 605 epochs).
    kernel: PhaseSettings = PhaseSettings(epochs=120, lr=3e-2, subnets_per_step=1, warmup_epochs=5)
    depth1: PhaseSettings = PhaseSettings(epochs=25, lr=2.5e-3, subnets_per_step=2)
    depth2: PhaseSettings = PhaseSettings(epochs=120, lr=7.5e-3, subnets_per_step=2, warmup_epochs=5)
    expand1: PhaseSettings = PhaseSettings(epochs=25, lr=2.5e-3, subnets_per_step=4)
    expand2: PhaseSettings = PhaseSettings(epochs=120, lr=7.5e-3, subnets_per_step=4, warmup_epochs=5)


class OFA(ProgressiveShrinking):
    """Kernel, then depth (largest two, then all), then expand (largest two, then all).

    A dimension with one choice has no phase; with two, only its second phase runs
    (both would open the same set).
    """

    name = "ofa"
    config_model = OFAConfig
    config: OFAConfig

    def phases(self) -> list[tuple[str, PhaseSettings, SearchSpace]]:
        cfg, full = self.config, self.space
        out: list[tuple[str, PhaseSettings, SearchSpace]] = []
        kernels, depths, expands = (full.max_kernel,), (max(full.depth_choices),), (full.max_expand,)
        if len(full.kernel_choices) > 1:
            kernels = full.kernel_choices
            out.append(("kernel", cfg.kernel, full.restricted(kernels=kernels, depths=depths, expands=expands)))
        for name, settings, opened in self._two_step(full.depth_choices, cfg.depth1, cfg.depth2, "depth"):
            depths = opened
            out.append((name, settings, full.restricted(kernels=kernels, depths=depths, expands=expands)))
        for name, settings, opened in self._two_step(full.expand_choices, cfg.expand1, cfg.expand2, "expand"):
            expands = opened
            out.append((name, settings, full.restricted(kernels=kernels, depths=depths, expands=expands)))
        return out

    @staticmethod
    def _two_step(choices: tuple, first: PhaseSettings, second: PhaseSettings, dim: str) -> list[tuple]:
        if len(choices) < 2:
            return []
        if len(choices) == 2:
            return [(f"{dim}2", second, choices)]
        return [(f"{dim}1", first, choices[-2:]), (f"{dim}2", second, choices)]


class CompOFAConfig(ProgressiveConfig):
    name: Literal["compofa"] = "compofa"
    phase1: PhaseSettings = PhaseSettings(epochs=25, lr=0.01, subnets_per_step=4)
    phase2: PhaseSettings = PhaseSettings(epochs=120, lr=0.03, subnets_per_step=4, warmup_epochs=5)  # 180+25+125=330


class CompOFA(ProgressiveShrinking):
    """Compound OFA: depth and expand ratio coupled per stage (the i-th smallest depth with the i-th
    smallest expand ratio: 2↔3, 3↔4, 4↔6), kernel fixed at the largest; phase 1 opens the largest two
    depths, phase 2 all of them."""

    name = "compofa"
    config_model = CompOFAConfig
    config: CompOFAConfig

    def __init__(self, config: CompOFAConfig, space: SearchSpace, seed: int = 0) -> None:
        depths, expands = space.depth_choices, space.expand_choices
        if len(depths) != len(expands):
            raise ValueError(
                f"compofa couples depth and expand ratio one to one, but the space has {len(depths)} depth choices "
                f"{list(depths)} and {len(expands)} expand choices {list(expands)}"
            )
        coupled = space.restricted(kernels=[space.max_kernel], coupling=dict(zip(depths, expands)))
        super().__init__(config, coupled, seed)

    def phases(self) -> list[tuple[str, PhaseSettings, SearchSpace]]:
        depths = self.space.depth_choices
        if len(depths) < 2:
            return [("phase2", self.config.phase2, self.space)]
        out = [] if len(depths) == 2 else [("phase1", self.config.phase1, self.space.restricted(depths=depths[-2:]))]
        return out + [("phase2", self.config.phase2, self.space)]
