"""The ledger and result tables of a run, declared as column lists, with the key each is upserted by."""

from __future__ import annotations

import pyarrow as pa

EPOCH_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string()),  # the comparison a run belongs to (a multi-method spec's run name), if any
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
    # the method's own per-epoch values at the epoch's last step, by name (DepS: epsilon)
    pa.field("scalars", pa.map_(pa.string(), pa.float64())),
    pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    # the per-epoch metric (`evaluation.validation`): top-1 % of the full model and of the smallest subnet
    pa.field("val_top1", pa.float64()),
    pa.field("val_top1_smallest", pa.float64()),
]
EPOCH_SCHEMA = pa.schema(EPOCH_COLUMNS)
EPOCH_KEY = ("run", "epoch")

SUBNET_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string()),  # the comparison a run belongs to (a multi-method spec's run name), if any
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
    pa.field("selection", pa.string()),  # the strategy that picked the subnet (spread, buckets, evolution, ...)
    pa.field("search_round", pa.int32()),  # evolution: 0 for the initial population, then the round that bred it
    # the extracted subnet's median latency at batch 1 and at `latency_batch_size`, on the evaluation device
    pa.field("latency_ms", pa.float64()),
    pa.field("latency_batch_size", pa.int32()),
    pa.field("batch_latency_ms", pa.float64()),
    pa.field("latency_device", pa.string()),
    pa.field("latency_threads", pa.int32()),
]
SUBNET_SCHEMA = pa.schema(SUBNET_COLUMNS)
SUBNET_KEY = ("run", "subnet_id")

# Training diagnostics (workers/diagnostics.py), one small table each per run.
CLASS_CORRELATION_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("group", pa.string()),
    pa.field("method", pa.string(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("images", pa.int32(), nullable=False),
    pa.field("predicted_class", pa.int32(), nullable=False),
    pa.field("other_class", pa.int32(), nullable=False),
    pa.field("predicted_count", pa.int32(), nullable=False),
    pa.field("cosine", pa.float64()),  # null where either class was never predicted
    pa.field("seconds", pa.float64(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
CLASS_CORRELATION_SCHEMA = pa.schema(CLASS_CORRELATION_COLUMNS)
CLASS_CORRELATION_KEY = ("run", "epoch", "predicted_class", "other_class")

GRADIENT_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("group", pa.string()),
    pa.field("method", pa.string(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("probe_epoch", pa.int32(), nullable=False),
    pa.field("probe_phase", pa.string(), nullable=False),
    pa.field("layer_index", pa.int32(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("params", pa.int64(), nullable=False),
    pa.field("gradient", pa.string(), nullable=False),  # no_shrink, shrink, eps_shrink
    pa.field("student_weight", pa.float64(), nullable=False),
    pa.field("l2_norm", pa.float64(), nullable=False),
    pa.field("cosine_to_no_shrink", pa.float64()),
    pa.field("seconds", pa.float64(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
GRADIENT_SCHEMA = pa.schema(GRADIENT_COLUMNS)
GRADIENT_KEY = ("run", "epoch", "layer_index", "gradient")

# Work paid for but lost: an attempt that died mid-epoch (workers/rundir/attempts.py), one row per attempt.
LOST_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string()),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("epoch", pa.int32()),  # the epoch in flight when the attempt died
    pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("lost_from", pa.timestamp("us", tz="UTC"), nullable=False),  # its last epoch's end, else its start
    pa.field("last_heartbeat", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("lost_seconds", pa.float64(), nullable=False),
    pa.field("devices", pa.int32(), nullable=False),
    pa.field("device_type", pa.string(), nullable=False),
    pa.field("device_hours", pa.float64(), nullable=False),
    pa.field("price_per_device_hour", pa.float64(), nullable=False),
    pa.field("dollars", pa.float64(), nullable=False),
    pa.field("detected_by_attempt", pa.int32(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
LOST_SCHEMA = pa.schema(LOST_COLUMNS)
LOST_KEY = ("run", "attempt")

# Devices held: one row per stretch a run's cluster or allocation held them (workers/rundir/holds.py).
HOLD_COLUMNS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string()),
    pa.field("hold", pa.int32(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # local cluster, slurm allocation, ray cluster
    pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("ended_at", pa.timestamp("us", tz="UTC"), nullable=False),  # its end, or its last heartbeat
    pa.field("held_seconds", pa.float64(), nullable=False),
    pa.field("devices", pa.int32(), nullable=False),
    pa.field("device_type", pa.string(), nullable=False),
    pa.field("price_per_device_hour", pa.float64(), nullable=False),
    pa.field("device_hours", pa.float64(), nullable=False),
    pa.field("dollars", pa.float64(), nullable=False),
    pa.field("open", pa.bool_(), nullable=False),  # still held, or ended by a controller that died
]
HOLD_SCHEMA = pa.schema(HOLD_COLUMNS)
HOLD_KEY = ("run", "hold")
