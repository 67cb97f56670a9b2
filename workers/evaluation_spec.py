"""The `evaluation` section of a job spec: which subnets, how they are calibrated and evaluated, and by how many
workers, with the training diagnostics (`evaluation.diagnostics`) taken along the way."""

from __future__ import annotations

from pydantic import Field, model_validator

from workers.constraint import SubnetConstraint
from workers.sections import Section
from workers.selection import AnySelection, SpreadSelection


class DiagnosticsConfig(Section):
    enabled: bool = True
    heatmap_epochs: tuple[int, ...] | None = Field(None, description="default: the last epoch of every phase")
    gradient_epochs: tuple[int, ...] | None = Field(
        None, description="default: the last epoch of every phase that another phase follows"
    )
    heatmap_images: int = Field(1000, gt=0, description="test images for the class-correlation heatmap")
    gradient_images: int = Field(64, gt=0, description="training images in the gradient diagnostic's minibatch")


class LatencySpec(Section):
    """`evaluation.latency`: how the evaluation workers time each subnet."""

    enabled: bool = True
    batch_size: int = Field(16, ge=1, description="the batch timed besides batch 1")
    warmup: int = Field(5, ge=0, description="untimed calls first")
    repeats: int = Field(20, ge=1, description="timed calls; their median is the latency")
    lookup_table: bool = Field(
        False, description="also time every block choice once (latency_table.json) and check it on 20 subnets"
    )


class ValidationSpec(Section):
    """`evaluation.validation`: the per-epoch metric (a sweep turns it on for its scheduler)."""

    enabled: bool = False
    images: int = Field(256, gt=0, description="test images the full model and smallest subnet are counted on")
    calibration_images: int = Field(128, gt=0, description="training images their BN is calibrated on")


class EvaluationSpec(Section):
    selection: AnySelection = SpreadSelection()
    subnets: int = Field(6, ge=0, description="for selection spread: subnets besides the smallest and largest")
    calibration_images: int = Field(2000, gt=0)
    calibration_batch_size: int = Field(200, gt=0)
    test_batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=1, description="parallel calibration/evaluation actors")
    cpus_per_worker: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per actor; default cpus_per_worker")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes an actor decodes its shard with")
    subnets_per_task: int | None = Field(
        None, ge=1, description="subnets evaluated together by all actors per round trip; default 4"
    )
    max_restarts: int = Field(2, ge=0, description="restarts of a dead actor; its unfinished task is retried")
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    latency: LatencySpec = LatencySpec()
    validation: ValidationSpec = ValidationSpec()
    constraint: SubnetConstraint = SubnetConstraint()

    @model_validator(mode="after")
    def _latency_measured_where_limited(self) -> EvaluationSpec:
        if self.constraint.max_latency_ms is not None and not self.latency.enabled:
            raise ValueError("constraint.max_latency_ms needs latency.enabled: the workers measure what it limits")
        return self

    @property
    def threads(self) -> int:
        """Torch threads of one evaluation worker."""
        return self.threads_per_worker or self.cpus_per_worker
