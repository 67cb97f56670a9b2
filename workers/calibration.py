"""BN calibration: recompute running statistics with a subnet active, before evaluating it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BN's statistics and set them to the cumulative average over `batches`; returns images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    seen = 0
    try:
        for images in batches:
            model(images)
            seen += images.size(0)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return seen
