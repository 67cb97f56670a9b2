"""MACs and parameter counts of a subnet, computed from its config alone.

MACs count convolutions and linear layers (the OFA convention); parameters
count every weight, bias and BN affine parameter of the extracted subnet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.supernet.space import SearchSpace, SubnetConfig, mid_channels, se_mid_channels


@dataclass(frozen=True)
class SubnetProfile:
    macs: int
    params: int


def _bn(channels: int) -> int:
    return 2 * channels


def _mbconv(
    hw: int, in_ch: int, out_ch: int, kernel: int, expand: float, stride: int, se: bool
) -> tuple[int, int, int]:
    """(macs, params, output spatial size) of one inverted bottleneck."""
    macs = params = 0
    mid = in_ch
    if expand != 1:
        mid = mid_channels(in_ch, expand)
        macs += hw * hw * in_ch * mid
        params += in_ch * mid + _bn(mid)
    out_hw = math.ceil(hw / stride)
    macs += out_hw * out_hw * mid * kernel * kernel
    params += mid * kernel * kernel + _bn(mid)
    if se:
        se_mid = se_mid_channels(mid)
        macs += 2 * mid * se_mid
        params += mid * se_mid + se_mid + se_mid * mid + mid
    macs += out_hw * out_hw * mid * out_ch
    params += mid * out_ch + _bn(out_ch)
    return macs, params, out_hw


def profile_subnet(space: SearchSpace, config: SubnetConfig, num_classes: int) -> SubnetProfile:
    hw = math.ceil(config.resolution / space.stem_stride)
    macs = hw * hw * 3 * 9 * space.stem_width
    params = 3 * 9 * space.stem_width + _bn(space.stem_width)

    m, p, hw = _mbconv(hw, space.stem_width, space.first_block_width, 3, 1, 1, False)
    macs, params, in_ch = macs + m, params + p, space.first_block_width
    for layout, stage in zip(space.stages, config.stages):
        for i, (kernel, expand) in enumerate(zip(stage.kernels, stage.expands)):
            stride = layout.stride if i == 0 else 1
            m, p, hw = _mbconv(hw, in_ch, layout.width, kernel, expand, stride, layout.se)
            macs, params, in_ch = macs + m, params + p, layout.width

    fe = space.final_expand_width
    macs += hw * hw * in_ch * fe
    params += in_ch * fe + _bn(fe)
    features = fe
    if space.has_feature_mix:
        fm = space.feature_mix_width
        macs, params, features = macs + fe * fm, params + fe * fm, fm
    macs += features * num_classes
    params += features * num_classes + num_classes
    return SubnetProfile(macs=macs, params=params)
