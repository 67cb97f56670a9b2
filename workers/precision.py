"""Mixed precision for the training step: `precision: fp32 | bf16 | fp16`.

The forwards (students and teachers) run under autocast in bf16 or fp16; losses
and distillation divergences are computed in fp32 from the logits; parameters,
their gradients and the optimiser state stay fp32. fp16's narrow exponent range
needs a gradient scaler, so an ε-scaled subnet's gradient (ε from 1e-4) does not
underflow to zero; bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from workers.precision_spec import Precision

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    def __init__(self, precision: Precision, device: torch.device) -> None:
        self.precision, self.device = precision, device
        self.dtype = DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def state_dict(self) -> dict | None:
        """The gradient scaler's state (its scale and growth count), for a checkpoint; None without one."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def autocast(self) -> AbstractContextManager:
        """The forwards' context: autocast to the precision's dtype, or nothing for fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], clip_norm: float | None) -> None:
        """The optimiser step on the (averaged) gradients: unscaled first for fp16, clipped if asked."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped where a gradient overflowed; the scale then shrinks
            self.scaler.update()
        else:
            optimizer.step()
