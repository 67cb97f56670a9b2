"""The `space` section of a job spec, and the search space it describes (the supernet is built in `supernet.py`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Protocol

from pydantic import Field, field_validator

from workers.data.spec import DatasetSpec
from workers.sections import Section
from workers.supernet.space import SPACES, SearchSpace


class SpaceSpec(Section):
    name: Literal["ofa_mobilenetv3", "ofa_proxyless"] = "ofa_mobilenetv3"
    kernel_choices: tuple[Literal[3, 5, 7], ...] = (3, 5, 7)
    expand_choices: tuple[float, ...] = (3, 4, 6)
    depth_choices: tuple[Literal[1, 2, 3, 4], ...] = (2, 3, 4)
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    cifar_variant: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.01, gt=0.0, le=1.0)
    kernel_transforms: bool = Field(False, description="OFA's learned 7->5->3 kernel-transform matrices")
    resolutions: tuple[int, ...] | None = Field(
        None,
        description="OFA's elastic resolution (its ImageNet recipe: 128-224 in steps of 4): each minibatch is "
        "resized on the device to one, drawn alike on every rank; a subnet is calibrated, evaluated and costed "
        "at its own; at most dataset.resolution. Default: dataset.resolution alone",
    )

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value or min(value) < 8 or len(set(value)) != len(value):
            raise ValueError("needs distinct resolutions of at least 8 pixels")
        return tuple(sorted(value))

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


class DescribesSupernet(Protocol):
    """A spec with a `space` section and a `dataset` (whose resolution the space serves)."""

    @property
    def space(self) -> SpaceSpec: ...

    @property
    def dataset(self) -> DatasetSpec: ...


def build_space(spec: DescribesSupernet) -> SearchSpace:
    s = spec.space
    space = SPACES[s.name](
        width_mult=s.width_mult,
        cifar=s.cifar_variant,
        resolution=spec.dataset.resolution,
        kernel_choices=s.kernel_choices,
        expand_choices=s.expand_choices,
        depth_choices=s.depth_choices,
        kernel_transforms=s.kernel_transforms,
    )
    if s.resolutions is None:
        return space
    if max(s.resolutions) > spec.dataset.resolution:
        raise ValueError(
            f"space.resolutions: {max(s.resolutions)} is above dataset.resolution {spec.dataset.resolution}, "
            "the size the loaders deliver"
        )
    return replace(space, resolution_choices=s.resolutions)
