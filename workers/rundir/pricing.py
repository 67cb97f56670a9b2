"""The price formula, in one place: device-hours = seconds x devices / 3600; dollars = device-hours x price."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """Device-hours and dollars: what a stretch of held devices cost, or a sum of such."""

    device_hours: float = 0.0
    dollars: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.device_hours + other.device_hours, self.dollars + other.dollars)

    @classmethod
    def of(cls, seconds: float, devices: int, price_per_device_hour: float) -> Usage:
        """What holding `devices` for `seconds` of wall time costs at `price_per_device_hour`."""
        device_hours = seconds * devices / 3600.0
        return cls(device_hours, device_hours * price_per_device_hour)

    @classmethod
    def total(cls, rows: Iterable[dict]) -> Usage:
        """The sum of ledger rows, each with its own `device_hours` and `dollars`."""
        device_hours = dollars = 0.0
        for row in rows:
            device_hours += row["device_hours"]
            dollars += row["dollars"]
        return cls(device_hours, dollars)
