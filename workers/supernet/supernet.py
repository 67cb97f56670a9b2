"""The elastic supernet: `set_active_subnet` / `get_active_subnet` is its whole interface."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from workers.supernet.dynamic_ops import (
    DynamicBatchNorm2d,
    DynamicDepthwiseConv2d,
    DynamicPointConv2d,
    DynamicSqueezeExcite,
)
from workers.supernet.space import SearchSpace, SubnetConfig, mid_channels
from workers.supernet.space_spec import DescribesSupernet
from workers.supernet.standalone import MBConvBlock, StandaloneNet, build_activation


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, act: str, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch, momentum=bn_momentum),
        build_activation(act),
    )


class DynamicMBConv(nn.Module):
    """Inverted bottleneck with elastic kernel and expand ratio."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_choices: tuple[int, ...],
        expand_choices: tuple[float, ...],
        stride: int,
        act: str,
        use_se: bool,
        bn_momentum: float,
        kernel_transforms: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.act = in_channels, out_channels, act
        max_mid = mid_channels(in_channels, max(expand_choices))
        self.has_expand = max(expand_choices) != 1
        if self.has_expand:
            self.expand_conv = DynamicPointConv2d(in_channels, max_mid)
            self.expand_bn = DynamicBatchNorm2d(max_mid, bn_momentum)
        self.depthwise = DynamicDepthwiseConv2d(max_mid, kernel_choices, stride, kernel_transforms)
        self.depthwise_bn = DynamicBatchNorm2d(max_mid, bn_momentum)
        self.se = DynamicSqueezeExcite(max_mid) if use_se else None
        self.project = DynamicPointConv2d(max_mid, out_channels)
        self.project_bn = DynamicBatchNorm2d(out_channels, bn_momentum)
        self.residual = stride == 1 and in_channels == out_channels
        self.activation = build_activation(act)
        self.active_expand = max(expand_choices)

    def set_active(self, kernel: int, expand: float) -> None:
        self.depthwise.active_kernel = kernel
        self.active_expand = expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.activation(self.expand_bn(self.expand_conv(y, mid_channels(self.in_channels, self.active_expand))))
        y = self.activation(self.depthwise_bn(self.depthwise(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y, self.out_channels))
        return x + y if self.residual else y

    def export(self) -> MBConvBlock:
        mid = mid_channels(self.in_channels, self.active_expand) if self.has_expand else self.in_channels
        expand = None
        if self.has_expand:
            expand = nn.Sequential(
                self.expand_conv.export(self.in_channels, mid), self.expand_bn.export(mid), build_activation(self.act)
            )
        depthwise = nn.Sequential(self.depthwise.export(mid), self.depthwise_bn.export(mid), build_activation(self.act))
        se = self.se.export(mid) if self.se is not None else None
        project = nn.Sequential(self.project.export(mid, self.out_channels), self.project_bn.export(self.out_channels))
        return MBConvBlock(expand, depthwise, se, project, self.residual)


class ElasticSupernet(nn.Module):
    def __init__(self, space: SearchSpace, num_classes: int, dropout: float = 0.1, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.space, self.num_classes, self.dropout_rate = space, num_classes, dropout
        self.stem = conv_bn_act(3, space.stem_width, 3, space.stem_stride, space.stem_act, bn_momentum)
        self.first_block = DynamicMBConv(
            space.stem_width, space.first_block_width, (3,), (1,), 1, space.first_block_act, False, bn_momentum
        )
        stages, in_ch = [], space.first_block_width
        for layout in space.stages:
            blocks = []
            for i in range(layout.max_depth):
                blocks.append(
                    DynamicMBConv(
                        in_ch,
                        layout.width,
                        space.kernel_choices,
                        space.expand_choices,
                        layout.stride if i == 0 else 1,
                        layout.act,
                        layout.se,
                        bn_momentum,
                        space.kernel_transforms,
                    )
                )
                in_ch = layout.width
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand = conv_bn_act(in_ch, space.final_expand_width, 1, 1, space.final_act, bn_momentum)
        if space.has_feature_mix:
            self.feature_mix = nn.Sequential(
                nn.Conv2d(space.final_expand_width, space.feature_mix_width, 1, bias=False), build_activation("hswish")
            )
            features = space.feature_mix_width
        else:
            self.feature_mix, features = nn.Identity(), space.final_expand_width
        self.classifier = nn.Linear(features, num_classes)
        self.active_dropout = dropout
        self._active = space.largest()
        self.set_active_subnet(self._active)

    def set_active_subnet(self, config: SubnetConfig) -> None:
        self.space.validate(config)
        for stage_cfg, blocks in zip(config.stages, self.stages):
            for block, kernel, expand in zip(blocks, stage_cfg.kernels, stage_cfg.expands):
                block.set_active(kernel, expand)
        self._active = config

    @property
    def active_subnet(self) -> SubnetConfig:
        return self._active

    def active_blocks(self) -> list[DynamicMBConv]:
        blocks = [self.first_block]
        for stage_cfg, stage_blocks in zip(self._active.stages, self.stages):
            blocks.extend(stage_blocks[: stage_cfg.depth])
        return blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.active_blocks():
            x = block(x)
        x = self.final_expand(x)
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        x = F.dropout(torch.flatten(x, 1), self.active_dropout, self.training)
        return self.classifier(x)

    def get_active_subnet(self) -> StandaloneNet:
        """A standalone module with copies of the active subnet's weights and BN statistics."""
        return StandaloneNet(
            copy.deepcopy(self.stem),
            [block.export() for block in self.active_blocks()],
            copy.deepcopy(self.final_expand),
            copy.deepcopy(self.feature_mix),
            self.active_dropout,
            copy.deepcopy(self.classifier),
        )

    def residual_blocks(self) -> list[DynamicMBConv]:
        """Blocks with an identity shortcut (stride 1, same width): the ones depth can skip."""
        return [b for b in [self.first_block, *[b for s in self.stages for b in s]] if b.residual]

    @torch.no_grad()
    def zero_residual_gammas(self) -> int:
        """Set γ of the last BN in every residual block to 0 (each block starts as the identity); returns how many."""
        blocks = self.residual_blocks()
        for block in blocks:
            block.project_bn.bn.weight.zero_()
        return len(blocks)


def build_supernet(spec: DescribesSupernet, space: SearchSpace, num_classes: int) -> ElasticSupernet:
    return ElasticSupernet(space, num_classes, dropout=spec.space.dropout, bn_momentum=spec.space.bn_momentum)
