"""The price catalog: dollars per device-hour for each device type and tier, each with its source and date.

A price comes from, in this order: the spec's `cost.price_per_device_hour`; a
Slurm cluster's internal price (`cluster.slurm.price_per_device_hour`, tier
"internal"); the catalog (the shipped `prices.yaml`, or `cost.catalog`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from orchestrator.errors import UserError

CPU = "cpu"
TIERS = ("on_demand", "spot")
INTERNAL = "internal"


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
    return _read_catalog(path) if path is not None else _shipped_catalog()


@functools.lru_cache(maxsize=1)
def _shipped_catalog() -> dict[str, dict]:
    return _read_catalog(None)


def _read_catalog(path: Path | None) -> dict[str, dict]:
    where = str(path) if path else "the shipped prices.yaml"
    try:
        text = path.read_text() if path else resources.files("orchestrator.cost").joinpath("prices.yaml").read_text()
        devices = (yaml.safe_load(text) or {}).get("devices")
    except (OSError, yaml.YAMLError, AttributeError) as error:
        raise UserError(f"cost.catalog: cannot read {where}: {error}") from None
    if not isinstance(devices, dict):
        raise UserError(f"cost.catalog: {where} has no 'devices' mapping")
    return devices


def catalog_entry(
    devices: dict[str, dict], device_type: str, tier: str, where: str = "the catalog"
) -> DevicePrice | None:
    """One tier of one device; None if the catalog has no price there. A tier is a number or {price, source, as_of}."""
    row = devices.get(device_type)
    if not isinstance(row, dict):
        return None
    value = row.get(tier)
    if value is None:
        return None
    if isinstance(value, dict):
        price, source, as_of = value.get("price"), value.get("source", ""), value.get("as_of", "")
    else:
        price, source, as_of = value, row.get("source", ""), row.get("as_of", "")
    try:
        price = float(price)
    except (TypeError, ValueError):
        raise UserError(f"cost.catalog: {where}: {device_type}.{tier} is not a price: {price!r}") from None
    if price < 0:
        raise UserError(f"cost.catalog: {where}: {device_type}.{tier} is negative: {price}")
    return DevicePrice(device_type, tier, price, str(source or ""), str(as_of or ""))


def lookup_price(
    device_type: str,
    tier: str,
    override: float | None = None,
    catalog_path: Path | None = None,
    cluster_price: float | None = None,
    cluster_source: str | None = None,
) -> DevicePrice:
    if override is not None:
        return DevicePrice(device_type, tier, override, "cost.price_per_device_hour in the job spec", "")
    if cluster_price is not None:
        source = cluster_source or "cluster.slurm.price_per_device_hour in the job spec (the cluster's internal price)"
        return DevicePrice(device_type, INTERNAL, cluster_price, source, "")
    devices = load_catalog(catalog_path)
    field = "cluster.accelerator" if device_type != CPU else "cost.catalog"
    if device_type not in devices:
        raise UserError(f"{field}: no price for {device_type!r}; the catalog has: {', '.join(sorted(devices))}")
    price = catalog_entry(devices, device_type, tier, str(catalog_path or "prices.yaml"))
    if price is None:
        raise UserError(f"cost.pricing: the catalog has no {tier} price for {device_type!r}")
    return price
