"""The training stage: the method's supernet training as a Ray Train TorchTrainer job."""

from __future__ import annotations

from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.plan import Plan
from orchestrator.storage.run_store import RunStore
from workers.training_loop import CHECKPOINT_FILE, TrainJobConfig, train_loop_per_worker


def build_trainer(plan: Plan) -> TorchTrainer:
    spec, cluster = plan.spec, plan.spec.cluster
    store = RunStore(plan.run_dir)
    job = TrainJobConfig(
        spec=spec,
        run_dir=str(plan.run_dir),
        devices=plan.training.devices,
        device_type=plan.training.price.device_type,
        price_per_device_hour=plan.training.price.per_device_hour,
    )
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.uses_gpu:
        resources["GPU"] = cluster.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if cluster.uses_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers, use_gpu=cluster.uses_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=spec.run,
            storage_path=str(store.ray_storage),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
            # Our progress lines go to stdout once, not also through Train's logger.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def run_training(plan: Plan) -> Path:
    """Train (resuming from the run's last checkpoint if there is one); returns the final checkpoint file."""
    result = build_trainer(plan).fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return Path(result.checkpoint.path) / CHECKPOINT_FILE
