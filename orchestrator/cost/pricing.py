"""The price formula, in one place: device-hours = seconds x devices / 3600; dollars = device-hours x price."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    device_hours: float
    dollars: float


def price_usage(wall_seconds: float, devices: int, price_per_device_hour: float) -> Usage:
    device_hours = wall_seconds * devices / 3600.0
    return Usage(device_hours=device_hours, dollars=device_hours * price_per_device_hour)
