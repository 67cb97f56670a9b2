"""The price catalog: dollars per device-hour for each device type, with source and date."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from orchestrator.errors import UserError

CPU = "cpu"


@dataclass(frozen=True)
class DevicePrice:
    device_type: str
    tier: str
    per_device_hour: float
    source: str
    as_of: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_catalog(path: Path | None = None) -> dict[str, dict]:
    try:
        text = path.read_text() if path else resources.files("orchestrator.cost").joinpath("prices.yaml").read_text()
        devices = (yaml.safe_load(text) or {}).get("devices")
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cost.catalog: cannot read {path}: {error}") from None
    if not isinstance(devices, dict):
        raise UserError(f"cost.catalog: {path} has no 'devices' mapping")
    return devices


def lookup_price(
    device_type: str, tier: str, override: float | None = None, catalog_path: Path | None = None
) -> DevicePrice:
    if override is not None:
        return DevicePrice(device_type, tier, override, "cost.price_per_device_hour in the job spec", "")
    devices = load_catalog(catalog_path)
    field = "cluster.accelerator" if device_type != CPU else "cost.catalog"
    if device_type not in devices:
        raise UserError(f"{field}: no price for {device_type!r}; the catalog has: {', '.join(sorted(devices))}")
    row = devices[device_type]
    price = row.get(tier)
    if price is None:
        raise UserError(f"cost.pricing: the catalog has no {tier} price for {device_type!r}")
    return DevicePrice(device_type, tier, float(price), str(row.get("source", "")), str(row.get("as_of", "")))
