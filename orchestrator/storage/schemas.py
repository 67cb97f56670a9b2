"""The result tables, declared as column lists."""

from __future__ import annotations

import pyarrow as pa

EPOCH_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("wall_seconds", pa.float64(), nullable=False),
    # set-up and checkpoint-restore time of the attempt that ran this epoch first; devices are held then too
    pa.field("overhead_seconds", pa.float64(), nullable=False),
    pa.field("devices", pa.int32(), nullable=False),
    pa.field("device_type", pa.string(), nullable=False),
    pa.field("device_hours", pa.float64(), nullable=False),
    pa.field("price_per_device_hour", pa.float64(), nullable=False),
    pa.field("dollars", pa.float64(), nullable=False),
    pa.field("images", pa.int64(), nullable=False),
    pa.field("images_per_second", pa.float64(), nullable=False),
    pa.field("subnets_per_step", pa.float64(), nullable=False),
    pa.field("loss", pa.float64(), nullable=False),
    pa.field("subnet_loss", pa.float64()),
    pa.field("lr", pa.float64(), nullable=False),
    pa.field("epsilon", pa.float64()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
EPOCH_SCHEMA = pa.schema(EPOCH_COLUMNS)
EPOCH_KEY = ("run", "epoch")

SUBNET_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("subnet_id", pa.string(), nullable=False),
    pa.field("config", pa.string(), nullable=False),
    pa.field("resolution", pa.int32(), nullable=False),
    pa.field("macs", pa.int64(), nullable=False),
    pa.field("params", pa.int64(), nullable=False),
    pa.field("top1", pa.float64(), nullable=False),
    pa.field("top5", pa.float64()),
    pa.field("calibration_images", pa.int32(), nullable=False),
    pa.field("test_images", pa.int32(), nullable=False),
    pa.field("checkpoint_epoch", pa.int32(), nullable=False),
    pa.field("eval_seconds", pa.float64(), nullable=False),
    pa.field("devices", pa.int32(), nullable=False),
    pa.field("device_type", pa.string(), nullable=False),
    pa.field("device_hours", pa.float64(), nullable=False),
    pa.field("dollars", pa.float64(), nullable=False),
    pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
SUBNET_SCHEMA = pa.schema(SUBNET_COLUMNS)
SUBNET_KEY = ("run", "subnet_id")
