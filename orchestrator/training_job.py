"""The training stage: the method's stages, in order, in one Ray Train TorchTrainer job.

One worker group trains every stage still to train: a stage starts from the
previous stage's final weights with a fresh optimiser, and its frozen teacher (if
it names one) is a finished stage's final weights; no worker group is started
again between stages. The job is Ray Train run `<run>`, so a resubmission resumes
from its last checkpoint (the checkpoint says which stage it belongs to). Finished
stages are recorded in the run directory (`workers/rundir/stages.py`), so a
resubmitted run goes straight to the first unfinished stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.plan import Plan
from workers.forecast_model import ForecastJob
from workers.rundir.stages import finished_weights
from workers.rundir.stops import RunStopped, read_stop
from workers.rundir.time_limit import TimeLimit
from workers.training_loop import TrainJobConfig, train_loop_per_worker


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
    first_stage: int = 0,
    init_checkpoint: Path | None = None,
    teacher_checkpoints: dict[str, str] | None = None,
    forecast: ForecastJob | None = None,
) -> TorchTrainer:
    job = TrainJobConfig(
        work=plan.work,
        run_dir=str(plan.run_dir),
        devices=plan.training.devices,
        device_type=plan.training.price.device_type,
        price_per_device_hour=plan.training.price.per_device_hour,
        first_stage=first_stage,
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        teacher_checkpoints=teacher_checkpoints or {},
        forecast=forecast,
        time_limit=TimeLimit.from_environment(),
    )
    return torch_trainer(
        plan, train_loop_per_worker, {"job": job}, plan.spec.run, plan.files.ray_storage, plan.spec.cluster.max_failures
    )


def finished_checkpoint(plan: Plan, index: int) -> Path | None:
    """The final weights of a stage finished earlier with the same epochs, if they are still there."""
    stage = plan.stages[index]
    return finished_weights(plan.files, stage.name, stage.first_epoch, stage.epochs)


def run_training(plan: Plan, echo: Callable[[str], None] = print, forecast: ForecastJob | None = None) -> Path:
    """Train the method's stages from its first unfinished one; returns the last stage's final weights file.

    `forecast`: measure the run's forecast in the training job before its first epoch.
    """
    stages = plan.stages
    first = next((i for i in range(len(stages)) if finished_checkpoint(plan, i) is None), None)
    if first is None:
        final = finished_checkpoint(plan, len(stages) - 1)
        assert final is not None
        return final
    earlier = {stages[i].name: finished_checkpoint(plan, i) for i in range(first)}
    for index in range(first, len(stages)):
        stage = stages[index]
        teacher = stage.teacher
        if teacher is not None and teacher not in earlier and teacher not in {s.name for s in stages[first:index]}:
            raise RuntimeError(f"stage {stage.name} distils from {teacher}, which has not run before it")
        if len(stages) > 1:
            epochs = f"epochs {stage.first_epoch}-{stage.end_epoch - 1}"
            echo(f"[{plan.spec.run}] stage {index + 1}/{len(stages)} {stage.name}, {epochs}")
    init = earlier[stages[first - 1].name] if first > 0 else None
    teachers = {name: str(path) for name, path in earlier.items()}
    build_trainer(plan, first, init, teachers, forecast).fit()
    stopped = read_stop(plan.files)  # the workers stopped on purpose (a cancel, the budget, the time limit)
    if stopped is not None:
        raise RunStopped(stopped)
    final = finished_checkpoint(plan, len(stages) - 1)
    if final is None:
        raise RuntimeError(f"training finished without the final weights of stage {stages[-1].name}")
    return final
