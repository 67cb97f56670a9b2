"""Plain PyTorch modules for an extracted subnet: no slicing, no elastic state."""

from __future__ import annotations

import torch
from torch import nn

from workers.supernet.space import se_mid_channels


def build_activation(name: str) -> nn.Module:
    activations = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid}
    if name == "none":
        return nn.Identity()
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(activations)}")
    return activations[name](inplace=True)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = se_mid_channels(channels)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(y))))


class MBConvBlock(nn.Module):
    """Inverted bottleneck: [1x1 expand, BN, act] -> kxk depthwise, BN, act -> [SE] -> 1x1 project, BN."""

    def __init__(
        self,
        expand: nn.Sequential | None,
        depthwise: nn.Sequential,
        se: nn.Module | None,
        project: nn.Sequential,
        residual: bool,
    ) -> None:
        super().__init__()
        self.expand = expand
        self.depthwise = depthwise
        self.se = se
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class StandaloneNet(nn.Module):
    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        final_expand: nn.Module,
        feature_mix: nn.Module,
        dropout: float,
        classifier: nn.Linear,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(self.blocks(self.stem(x)))
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(torch.flatten(x, 1)))
