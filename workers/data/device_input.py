"""Images travel as uint8 from the loaders and are made model input on the device.

A loader worker decodes and augments (PIL), then hands over uint8: a quarter of
float32's bytes through shared memory, pinned memory and the host-to-device
copy. Conversion, resizing and normalisation are a few fused element-wise
kernels on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DIGITS_MEAN, DIGITS_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of images scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_model_input(self, images: torch.Tensor, device: torch.device, resolution: int | None = None) -> torch.Tensor:
        """uint8 NCHW images as normalised float32 on `device` (channels-last), resized to `resolution` if given."""
        x = images.to(device, non_blocking=True)
        x = x.float() if x.dtype == torch.uint8 else x.to(torch.float32)
        if resolution is not None and x.shape[-1] != resolution:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=device).view(1, 3, 1, 1)
        return (x * scale - shift).contiguous(memory_format=torch.channels_last)
