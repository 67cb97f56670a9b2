"""The training stage: each of the method's stages as a Ray Train TorchTrainer job, in order.

A single-stage method trains as Ray Train run `<run>`; a multi-stage one as
`<run>.<stage>` per stage. A stage starts from the previous stage's final
checkpoint, and its frozen teacher (if it names one) is a finished stage's final
checkpoint. Finished stages are recorded in `<run_dir>/stages.json`, so a
re-submitted run goes straight to the first unfinished stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.plan import Plan
from workers.forecast_model import ForecastJob
from workers.rundir.stops import RunStopped, read_stop
from workers.training_loop import CHECKPOINT_FILE, TrainJobConfig, train_loop_per_worker


def trainer_name(plan: Plan, index: int) -> str:
    return plan.spec.run if len(plan.stages) == 1 else f"{plan.spec.run}.{plan.stages[index].name}"


def torch_trainer(
    plan: Plan, loop: Callable[[dict], None], config: dict, name: str, storage_path: Path, max_failures: int
) -> TorchTrainer:
    """A TorchTrainer on the plan's workers: how every job of a run (training, the forecast) gets them."""
    cluster = plan.spec.cluster
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.uses_gpu:
        resources["GPU"] = cluster.gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if cluster.uses_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers, use_gpu=cluster.uses_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
            # Our progress lines go to stdout once, not also through Train's logger.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def build_trainer(
    plan: Plan,
    index: int = 0,
    init_checkpoint: Path | None = None,
    teacher_checkpoint: Path | None = None,
    forecast: ForecastJob | None = None,
) -> TorchTrainer:
    job = TrainJobConfig(
        work=plan.work,
        run_dir=str(plan.run_dir),
        devices=plan.training.devices,
        device_type=plan.training.price.device_type,
        price_per_device_hour=plan.training.price.per_device_hour,
        stage=index,
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
        forecast=forecast,
    )
    return torch_trainer(
        plan,
        train_loop_per_worker,
        {"job": job},
        trainer_name(plan, index),
        plan.files.ray_storage,
        plan.spec.cluster.max_failures,
    )


def _finished_stages(plan: Plan) -> dict[str, dict]:
    data = plan.files.read_json(plan.files.stages)
    return data if isinstance(data, dict) else {}


def _record_finished(plan: Plan, index: int, checkpoint: Path) -> None:
    stage = plan.stages[index]
    done = _finished_stages(plan)
    done[stage.name] = {"first_epoch": stage.first_epoch, "epochs": stage.epochs, "checkpoint": str(checkpoint)}
    plan.files.write_json(plan.files.stages, done)


def finished_checkpoint(plan: Plan, index: int) -> Path | None:
    """The final checkpoint of a stage finished earlier with the same epochs, if it is still there."""
    stage, record = plan.stages[index], _finished_stages(plan).get(plan.stages[index].name)
    if record is None or (record["first_epoch"], record["epochs"]) != (stage.first_epoch, stage.epochs):
        return None
    path = Path(record["checkpoint"])
    return path if path.exists() else None


def run_stage(
    plan: Plan,
    index: int,
    init_checkpoint: Path | None = None,
    teacher_checkpoint: Path | None = None,
    forecast: ForecastJob | None = None,
) -> Path:
    """Train one stage (resuming from its last checkpoint if there is one); returns its final checkpoint file."""
    result = build_trainer(plan, index, init_checkpoint, teacher_checkpoint, forecast).fit()
    stopped = read_stop(plan.run_dir)  # the workers stopped on purpose (a cancel request, the budget)
    if result.checkpoint is None:
        if stopped is not None:
            raise RunStopped(stopped)  # stopped within the stage's first epoch: no checkpoint of its own yet
        raise RuntimeError(f"stage {plan.stages[index].name} finished without a checkpoint")
    checkpoint = Path(result.checkpoint.path) / CHECKPOINT_FILE
    if stopped is None or stopped.epoch == plan.stages[index].end_epoch - 1:
        _record_finished(plan, index, checkpoint)
    if stopped is not None:
        raise RunStopped(stopped)
    return checkpoint


def run_training(plan: Plan, echo: Callable[[str], None] = print, forecast: ForecastJob | None = None) -> Path:
    """Run the method's stages in order, skipping finished ones; returns the last stage's final checkpoint file.

    `forecast`: measure the run's forecast in the first training job this call starts, before its first epoch.
    """
    finals: dict[str, Path] = {}
    previous: Path | None = None
    for index, stage in enumerate(plan.stages):
        checkpoint = finished_checkpoint(plan, index)
        if checkpoint is None:
            if len(plan.stages) > 1:
                epochs = f"epochs {stage.first_epoch}-{stage.end_epoch - 1}"
                echo(f"[{plan.spec.run}] stage {index + 1}/{len(plan.stages)} {stage.name}, {epochs}")
            teacher = finals.get(stage.teacher) if stage.teacher is not None else None
            if stage.teacher is not None and teacher is None:
                raise RuntimeError(f"stage {stage.name} distils from {stage.teacher}, which has not run before it")
            checkpoint = run_stage(plan, index, previous, teacher, forecast)
            forecast = None
        finals[stage.name] = previous = checkpoint
    assert previous is not None, "a method has at least one stage"
    return previous
