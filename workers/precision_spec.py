"""The `precision` key of a job spec: what the training step's forwards compute in (`workers/precision.py`)."""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]
