"""Elastic operations: each keeps its largest weight once and slices it for the active subnet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.supernet.space import se_mid_channels
from workers.supernet.standalone import SqueezeExcite


class DynamicPointConv2d(nn.Module):
    """1x1 convolution with elastic input and output channels: weight[:out, :in]."""

    def __init__(self, max_in: int, max_out: int, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=bias)

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        weight = self.conv.weight[:out_channels, : x.size(1)]
        bias = self.conv.bias[:out_channels] if self.conv.bias is not None else None
        return F.conv2d(x, weight, bias)

    def export(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=self.conv.bias is not None)
        conv.weight.data.copy_(self.conv.weight.data[:out_channels, :in_channels])
        if self.conv.bias is not None:
            conv.bias.data.copy_(self.conv.bias.data[:out_channels])
        return conv


class DynamicDepthwiseConv2d(nn.Module):
    """Depthwise convolution with elastic kernel and channels.

    A smaller kernel is the centre crop of the largest. With `kernel_transforms`
    (OFA), each step down (7 -> 5 -> 3) also passes the crop through a learned
    k²xk² matrix shared by all channels of the layer, initialised to identity.
    """

    def __init__(
        self, max_channels: int, kernel_choices: tuple[int, ...], stride: int, kernel_transforms: bool = False
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(kernel_choices, reverse=True))
        self.max_kernel = self.kernel_sizes[0]
        self.stride = stride
        self.conv = nn.Conv2d(
            max_channels, max_channels, self.max_kernel, stride, self.max_kernel // 2, groups=max_channels, bias=False
        )
        self.transforms = nn.ParameterDict()
        if kernel_transforms:
            for larger, smaller in zip(self.kernel_sizes, self.kernel_sizes[1:]):
                self.transforms[f"{larger}to{smaller}"] = nn.Parameter(torch.eye(smaller * smaller))
        self.active_kernel = self.max_kernel

    @staticmethod
    def _centre(weight: torch.Tensor, kernel: int) -> torch.Tensor:
        start = (weight.size(-1) - kernel) // 2
        return weight[..., start : start + kernel, start : start + kernel]

    def kernel_weight(self, channels: int, kernel: int) -> torch.Tensor:
        weight = self.conv.weight[:channels]
        if not len(self.transforms):
            return self._centre(weight, kernel)
        for larger, smaller in zip(self.kernel_sizes, self.kernel_sizes[1:]):
            if larger == kernel:
                break
            crop = self._centre(weight, smaller)
            matrix = self.transforms[f"{larger}to{smaller}"]
            weight = (crop.reshape(-1, smaller * smaller) @ matrix).reshape(crop.shape)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, k = x.size(1), self.active_kernel
        return F.conv2d(x, self.kernel_weight(channels, k), None, self.stride, k // 2, 1, channels)

    def export(self, channels: int) -> nn.Conv2d:
        k = self.active_kernel
        conv = nn.Conv2d(channels, channels, k, self.stride, k // 2, groups=channels, bias=False)
        conv.weight.data.copy_(self.kernel_weight(channels, k).data)
        return conv


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm keeping full-size statistics and affine parameters; the first C are used.

    With `momentum=None` the running statistics are a cumulative average, which
    is what BN calibration relies on.
    """

    def __init__(self, max_channels: int, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_channels, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, c = self.bn, x.size(1)
        factor = 0.0
        if self.training:
            bn.num_batches_tracked += 1
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(
            x,
            bn.running_mean[:c],
            bn.running_var[:c],
            bn.weight[:c],
            bn.bias[:c],
            self.training,
            factor,
            bn.eps,
        )

    def export(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.bn.eps, momentum=self.bn.momentum)
        bn.weight.data.copy_(self.bn.weight.data[:channels])
        bn.bias.data.copy_(self.bn.bias.data[:channels])
        bn.running_mean.copy_(self.bn.running_mean[:channels])
        bn.running_var.copy_(self.bn.running_var[:channels])
        bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        return bn


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-excite whose reduction width follows the active channel count."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        self.reduce = DynamicPointConv2d(max_channels, se_mid_channels(max_channels), bias=True)
        self.expand = DynamicPointConv2d(se_mid_channels(max_channels), max_channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(self.reduce(y, se_mid_channels(c)))
        return x * F.hardsigmoid(self.expand(y, c))

    def export(self, channels: int) -> SqueezeExcite:
        se = SqueezeExcite(channels)
        mid = se_mid_channels(channels)
        se.reduce = self.reduce.export(channels, mid)
        se.expand = self.expand.export(mid, channels)
        return se
