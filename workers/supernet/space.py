"""Search spaces and subnet configs.

A subnet config is plain data: per stage, the kernel and expand ratio of each
*active* block (so the depth is the length of those tuples), plus the input
resolution. Because inactive blocks are not part of the config, two configs
describe the same network exactly when they are equal, and the id is stable.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going more than 10 % down."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def mid_channels(in_channels: int, expand: float) -> int:
    """Width of an inverted-residual block's expanded (depthwise) layer."""
    return make_divisible(round(in_channels * expand), 8)


def se_mid_channels(channels: int) -> int:
    """Width of a squeeze-and-excite module's reduced layer."""
    return make_divisible(channels // 4, 8)


@dataclass(frozen=True)
class StageConfig:
    kernels: tuple[int, ...]
    expands: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.kernels) != len(self.expands) or not self.kernels:
            raise ValueError("a stage needs one kernel and one expand ratio per active block")
        # Canonical types, so that equal networks serialise (and hash) identically.
        object.__setattr__(self, "kernels", tuple(int(k) for k in self.kernels))
        object.__setattr__(self, "expands", tuple(float(e) for e in self.expands))

    @property
    def depth(self) -> int:
        return len(self.kernels)


@dataclass(frozen=True)
class SubnetConfig:
    stages: tuple[StageConfig, ...]
    resolution: int

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "resolution": self.resolution,
            "stages": [{"kernels": list(s.kernels), "expands": list(s.expands)} for s in self.stages],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> SubnetConfig:
        stages = tuple(StageConfig(tuple(s["kernels"]), tuple(s["expands"])) for s in data["stages"])
        return cls(stages=stages, resolution=int(data["resolution"]))

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        return cls.from_dict(json.loads(text))

    @property
    def subnet_id(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageLayout:
    width: int
    stride: int
    act: str
    se: bool
    max_depth: int
    elastic_depth: bool = True  # False: always max_depth blocks (ProxylessNAS's single 320-wide block)


@dataclass(frozen=True)
class SearchSpace:
    """The fixed skeleton of a supernet and the elastic choices inside it."""

    name: str
    stem_width: int
    stem_stride: int
    stem_act: str
    first_block_width: int
    first_block_act: str
    stages: tuple[StageLayout, ...]
    final_expand_width: int
    feature_mix_width: int
    kernel_choices: tuple[int, ...]
    expand_choices: tuple[float, ...]
    depth_choices: tuple[int, ...]
    resolution: int
    # CompOFA: depth d forces every block of the stage to expand ratio coupling[d].
    depth_expand_coupling: dict[int, float] | None = field(default=None)
    final_act: str = "hswish"
    # MobileNetV3: pool, then a 1x1 "feature mix" without BN; ProxylessNAS: none (its final 1x1 conv is 1280 wide).
    has_feature_mix: bool = True
    # OFA's kernel-transform matrices: smaller kernels are learned linear maps of the larger kernel's centre.
    kernel_transforms: bool = False
    # OFA's elastic resolution: training draws one per minibatch, a subnet is evaluated at its own; () = `resolution`.
    resolution_choices: tuple[int, ...] = ()

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.resolution_choices or (self.resolution,)

    @property
    def max_kernel(self) -> int:
        return max(self.kernel_choices)

    @property
    def max_expand(self) -> float:
        return max(self.expand_choices)

    def _stage(
        self, layout: StageLayout, depth: int, kernel: int | None, expand: float | None, rng: random.Random | None
    ) -> StageConfig:
        if not layout.elastic_depth:
            depth = layout.max_depth
        elif self.depth_expand_coupling is not None:
            expand = self.depth_expand_coupling[depth]
        kernels = tuple(kernel if kernel is not None else rng.choice(self.kernel_choices) for _ in range(depth))
        expands = tuple(expand if expand is not None else rng.choice(self.expand_choices) for _ in range(depth))
        return StageConfig(kernels, expands)

    def _uniform(self, pick: Callable[[tuple], Any]) -> SubnetConfig:
        """Every stage and block takes `pick` of each sorted choice list."""
        depth, kernel, expand = pick(self.depth_choices), pick(self.kernel_choices), pick(self.expand_choices)
        return SubnetConfig(
            tuple(self._stage(layout, depth, kernel, expand, None) for layout in self.stages), pick(self.resolutions)
        )

    def largest(self) -> SubnetConfig:
        return self._uniform(lambda choices: choices[-1])

    def smallest(self) -> SubnetConfig:
        return self._uniform(lambda choices: choices[0])

    def middle(self) -> SubnetConfig:
        """The median choice of depth, kernel and expand everywhere (RSS's "middle" subnet)."""
        return self._uniform(lambda choices: choices[len(choices) // 2])

    def sample(self, rng: random.Random) -> SubnetConfig:
        stages = tuple(self._stage(layout, rng.choice(self.depth_choices), None, None, rng) for layout in self.stages)
        # One resolution draws nothing: a fixed-resolution space keeps the random stream it always had.
        resolution = rng.choice(self.resolutions) if len(self.resolutions) > 1 else self.resolution
        return SubnetConfig(stages, resolution)

    def restricted(
        self,
        kernels: Sequence[int] | None = None,
        expands: Sequence[float] | None = None,
        depths: Sequence[int] | None = None,
        coupling: dict[int, float] | None = None,
    ) -> SearchSpace:
        """The same supernet skeleton with fewer choices open (a progressive-shrinking phase, CompOFA)."""
        return replace(
            self,
            kernel_choices=tuple(sorted(kernels)) if kernels is not None else self.kernel_choices,
            expand_choices=tuple(sorted(float(e) for e in expands)) if expands is not None else self.expand_choices,
            depth_choices=tuple(sorted(depths)) if depths is not None else self.depth_choices,
            depth_expand_coupling=coupling if coupling is not None else self.depth_expand_coupling,
        )

    def choices(self) -> dict[str, list]:
        out: dict[str, list] = {
            "kernel": list(self.kernel_choices),
            "expand": list(self.expand_choices),
            "depth": list(self.depth_choices),
        }
        if self.depth_expand_coupling is not None:
            out["depth_expand_coupling"] = {d: e for d, e in sorted(self.depth_expand_coupling.items())}
        return out

    def validate(self, config: SubnetConfig) -> None:
        if len(config.stages) != len(self.stages):
            raise ValueError(f"subnet has {len(config.stages)} stages, the space {len(self.stages)}")
        for i, (stage, layout) in enumerate(zip(config.stages, self.stages)):
            if not layout.elastic_depth:
                if stage.depth != layout.max_depth:
                    raise ValueError(f"stage {i}: depth {stage.depth}; this stage always has {layout.max_depth}")
            elif stage.depth not in self.depth_choices or stage.depth > layout.max_depth:
                raise ValueError(f"stage {i}: depth {stage.depth} not in {self.depth_choices}")
            for k in stage.kernels:
                if k not in self.kernel_choices:
                    raise ValueError(f"stage {i}: kernel {k} not in {self.kernel_choices}")
            for e in stage.expands:
                if e not in self.expand_choices:
                    raise ValueError(f"stage {i}: expand {e} not in {self.expand_choices}")


def mobilenetv3_space(
    width_mult: float = 1.0,
    cifar: bool = False,
    resolution: int = 224,
    kernel_choices: Sequence[int] = (3, 5, 7),
    expand_choices: Sequence[float] = (3, 4, 6),
    depth_choices: Sequence[int] = (2, 3, 4),
    depth_expand_coupling: dict[int, float] | None = None,
    kernel_transforms: bool = False,
) -> SearchSpace:
    """The OFA MobileNetV3 space; `cifar` makes the stem and first stage stride 1 (8x downsampling)."""

    def w(c: int) -> int:
        return make_divisible(c * width_mult, 8)

    widths = (24, 40, 80, 112, 160)
    strides = (1 if cifar else 2, 2, 2, 1, 2)
    acts = ("relu", "relu", "hswish", "hswish", "hswish")
    ses = (False, True, False, True, True)
    stages = tuple(StageLayout(w(c), s, a, se, max(depth_choices)) for c, s, a, se in zip(widths, strides, acts, ses))
    return SearchSpace(
        name="ofa_mobilenetv3",
        stem_width=w(16),
        stem_stride=1 if cifar else 2,
        stem_act="hswish",
        first_block_width=w(16),
        first_block_act="relu",
        stages=stages,
        final_expand_width=w(960),
        feature_mix_width=w(1280) if width_mult > 1.0 else 1280,
        kernel_choices=tuple(sorted(kernel_choices)),
        expand_choices=tuple(sorted(float(e) for e in expand_choices)),
        depth_choices=tuple(sorted(depth_choices)),
        resolution=resolution,
        depth_expand_coupling=depth_expand_coupling,
        kernel_transforms=kernel_transforms,
    )


def proxyless_space(
    width_mult: float = 1.0,
    cifar: bool = False,
    resolution: int = 224,
    kernel_choices: Sequence[int] = (3, 5, 7),
    expand_choices: Sequence[float] = (3, 4, 6),
    depth_choices: Sequence[int] = (2, 3, 4),
    depth_expand_coupling: dict[int, float] | None = None,
    kernel_transforms: bool = False,
) -> SearchSpace:
    """The OFA ProxylessNAS space: ReLU6, no SE, five elastic stages and one fixed-depth 320-wide block.

    The final 1x1 conv (with BN) goes straight to 1280 channels before pooling; there is
    no separate feature-mix layer. `cifar` makes the stem and first stage stride 1.
    """

    def w(c: int) -> int:
        return make_divisible(c * width_mult, 8)

    widths = (24, 40, 80, 96, 192)
    strides = (1 if cifar else 2, 2, 2, 1, 2)
    depth = max(depth_choices)
    stages = tuple(StageLayout(w(c), s, "relu6", False, depth) for c, s in zip(widths, strides))
    stages += (StageLayout(w(320), 1, "relu6", False, 1, elastic_depth=False),)
    return SearchSpace(
        name="ofa_proxyless",
        stem_width=w(32),
        stem_stride=1 if cifar else 2,
        stem_act="relu6",
        first_block_width=w(16),
        first_block_act="relu6",
        stages=stages,
        final_expand_width=make_divisible(1280 * width_mult, 8) if width_mult > 1.0 else 1280,
        feature_mix_width=0,
        kernel_choices=tuple(sorted(kernel_choices)),
        expand_choices=tuple(sorted(float(e) for e in expand_choices)),
        depth_choices=tuple(sorted(depth_choices)),
        resolution=resolution,
        depth_expand_coupling=depth_expand_coupling,
        final_act="relu6",
        has_feature_mix=False,
        kernel_transforms=kernel_transforms,
    )


SPACES: dict[str, Callable[..., SearchSpace]] = {"ofa_mobilenetv3": mobilenetv3_space, "ofa_proxyless": proxyless_space}
