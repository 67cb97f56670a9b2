"""From a validated spec to a plan: where the run lives, what it holds, what it costs per hour.

The plan knows no backend: where its Ray cluster comes from is the backend's
business (`orchestrator/backends/`), and so is its part of the description.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.cost.catalog import CPU, DevicePrice, lookup_price
from orchestrator.errors import UserError
from orchestrator.spec import JobSpec
from workers.data.datasets import DatasetInfo, DatasetNotFound, describe
from workers.diagnostics import check_epochs
from workers.forecast_model import ForecastBasis
from workers.job import WorkerSpec
from workers.methods import Stage, TrainingMethod, build_method
from workers.rundir.layout import RunDir, run_dir_for
from workers.rundir.plan_record import PhaseSpan, PlanRecord
from workers.selection import select_subnets
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SearchSpace, SubnetConfig
from workers.supernet.space_spec import build_space


@dataclass(frozen=True)
class Allocation:
    """Devices held by one stage, and their price."""

    devices: int
    price: DevicePrice

    @property
    def dollars_per_hour(self) -> float:
        return self.devices * self.price.per_device_hour


@dataclass(frozen=True)
class Plan:
    spec: JobSpec
    work: WorkerSpec  # what the run's workers are handed
    run_dir: Path
    dataset: DatasetInfo
    training: Allocation
    evaluation: Allocation  # per evaluation worker
    training_method: TrainingMethod  # built once; the controller asks it for stages, phases and its search space
    subnets: tuple[SubnetConfig, ...]
    subnet_macs: tuple[int, ...]  # of `subnets`, in order
    phases: tuple[tuple[str, int, int], ...]  # (phase, first epoch, last epoch)
    stages: tuple[Stage, ...]  # the method's stages: one training job each, in order
    steps_per_epoch: int
    global_batch: int
    mac_range: tuple[int, int]
    selection: dict = field(default_factory=dict)  # how well the selection strategy met its request

    @property
    def method(self) -> str:
        return self.training_method.name

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def search_space(self) -> SearchSpace:
        """The space the trained supernet serves (CompOFA: the coupled one), where evaluation picks subnets."""
        return self.training_method.search_space

    @property
    def eval_devices_per_worker(self) -> float:
        """Evaluation is priced by the devices the run holds meanwhile (on Slurm: the whole allocation), shared
        by its workers; at least what each worker uses itself."""
        workers = max(1, self.spec.evaluation.workers)
        return max(self.training.devices / workers, float(self.evaluation.devices))

    @property
    def eval_subnets(self) -> int:
        """How many subnets evaluation will take in all: the planned ones, or what a search may add to them."""
        return int(self.selection.get("at_most", len(self.subnets)))

    def record(self) -> PlanRecord:
        """The plan as its run directory keeps it and its readers see it."""
        return PlanRecord.from_dict(self.describe())

    def describe(self) -> dict:
        spec, cluster = self.spec, self.spec.cluster
        return {
            "run": spec.run,
            "run_dir": str(self.run_dir),
            "group": spec.group,
            "method": spec.method.model_dump(mode="json"),
            "phases": [PhaseSpan(p, a, b).to_dict() for p, a, b in self.phases],
            "stages": [stage.describe() for stage in self.stages],
            "dataset": {
                "name": spec.dataset.name,
                "classes": self.dataset.num_classes,
                "train_images": self.dataset.train_size,
                "test_images": self.dataset.test_size,
                "resolution": spec.dataset.resolution,
            },
            "space": {
                "name": spec.space.name,
                "width_mult": spec.space.width_mult,
                "cifar_variant": spec.space.cifar_variant,
                "smallest_macs": self.mac_range[0],
                "largest_macs": self.mac_range[1],
            },
            "cluster": {
                "backend": cluster.backend,
                "workers": cluster.num_workers,
                "cpus_per_worker": cluster.cpus_per_worker,
                "gpus_per_worker": cluster.gpus_per_worker,
                "collective_backend": "nccl" if cluster.uses_gpu else "gloo",
                "global_batch": self.global_batch,
                "steps_per_epoch": self.steps_per_epoch,
            },
            "cost": {
                "device_type": self.training.price.device_type,
                "devices": self.training.devices,
                "pricing": self.training.price.tier,
                "price_per_device_hour": self.training.price.per_device_hour,
                "training_dollars_per_hour": round(self.training.dollars_per_hour, 4),
                "source": self.training.price.source,
                "as_of": self.training.price.as_of,
            },
            "evaluation": {
                "selection": spec.evaluation.selection.model_dump(mode="json") | self.selection,
                "subnets": len(self.subnets),
                "workers": spec.evaluation.workers,
                "calibration_images": spec.evaluation.calibration_images,
                "device_type": self.evaluation.price.device_type,
                "devices_per_worker": self.evaluation.devices,
            },
            "budget": spec.budget.model_dump(mode="json"),
            "trial_values": spec.trial_values,
        }

    def fingerprint(self) -> str:
        """What drives a run's cost: its data, space, method, optimiser, hardware, prices and evaluation.

        Not its budget or storage, so a resumed run with a larger budget keeps its forecast.
        """
        spec = self.spec
        keys = {
            "dataset": spec.dataset.model_dump(mode="json"),
            "space": spec.space.model_dump(mode="json"),
            "method": spec.method.model_dump(mode="json"),
            "optimizer": spec.optimizer.model_dump(mode="json"),
            "precision": spec.precision,
            "cluster": spec.cluster.model_dump(mode="json"),
            "evaluation": spec.evaluation.model_dump(mode="json"),
            "training_price": self.training.price.per_device_hour,
            "evaluation_price": self.evaluation.price.per_device_hour,
            "subnets": [c.subnet_id for c in self.subnets],
        }
        return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def forecast_basis(self) -> ForecastBasis:
        return ForecastBasis(
            run=self.spec.run,
            method=self.method,
            fingerprint=self.fingerprint(),
            phases=self.phases,
            steps_per_epoch=self.steps_per_epoch,
            devices=self.training.devices,
            device_type=self.training.price.device_type,
            price_per_device_hour=self.training.price.per_device_hour,
            training_jobs=1,  # one worker group trains every stage
            eval_subnet_macs=self.subnet_macs,
            eval_subnets=self.eval_subnets,
            eval_workers=self.spec.evaluation.workers,
            eval_devices=self.eval_devices_per_worker,
            eval_price_per_device_hour=self.training.price.per_device_hour,
        )


def _allocation(spec: JobSpec, gpus: int, cpus: int, count: int) -> Allocation:
    device_type = spec.cluster.accelerator if gpus > 0 else CPU
    slurm = spec.cluster.slurm
    price = lookup_price(
        device_type,
        spec.cost.pricing,
        spec.cost.price_per_device_hour,
        spec.cost.catalog,
        slurm.price_per_device_hour if slurm is not None else None,
        slurm.price_source if slurm is not None else None,
    )
    return Allocation(devices=count * (gpus if gpus > 0 else cpus), price=price)


def _training_allocation(spec: JobSpec) -> Allocation:
    """The devices training pays for: the workers' own, or on Slurm every device the allocation holds."""
    cluster = spec.cluster
    if cluster.slurm is not None:
        nodes = cluster.slurm.nodes
        return _allocation(spec, cluster.slurm.gpus_per_node, cluster.slurm_cpus_per_node, nodes)
    return _allocation(spec, cluster.gpus_per_worker, cluster.cpus_per_worker, cluster.num_workers)


def _phases(method: TrainingMethod, epochs: int) -> tuple[tuple[str, int, int], ...]:
    phases: list[list] = []
    for epoch in range(epochs):
        name = method.phase(epoch)
        if phases and phases[-1][0] == name:
            phases[-1][2] = epoch
        else:
            phases.append([name, epoch, epoch])
    return tuple(tuple(p) for p in phases)


def make_plan(spec: JobSpec) -> Plan:
    try:
        run_dir = run_dir_for(spec.storage.root, spec.run)
    except ValueError as error:
        raise UserError(f"run: {error}") from None
    work = spec.worker_spec()
    if spec.dataset.name == "imagefolder":  # the workers read the run's index of the folder, not the folder
        dataset = spec.dataset.model_copy(update={"index": RunDir(run_dir).image_index})
        work = work.model_copy(update={"dataset": dataset})
    try:
        info = describe(work.dataset)
    except DatasetNotFound as error:
        raise UserError(str(error)) from None
    cluster = spec.cluster
    needed = cluster.num_workers * cluster.cpus_per_worker
    if cluster.backend == "local" and needed > (os.cpu_count() or 1):
        raise UserError(
            f"cluster: {cluster.num_workers} workers x {cluster.cpus_per_worker} CPUs = {needed}, "
            f"but this machine has {os.cpu_count()} CPUs"
        )
    global_batch = spec.dataset.batch_size * cluster.num_workers
    steps = info.train_size // global_batch
    if steps == 0:
        raise UserError(
            f"dataset.batch_size: {spec.dataset.batch_size} x {cluster.num_workers} workers is more than "
            f"the {info.train_size} training images"
        )
    try:
        method = build_method(work.method, build_space(work), work.seed)
    except ValueError as error:
        raise UserError(f"method: {error}") from None
    space = method.search_space  # the space the trained supernet serves (CompOFA: the coupled one)
    try:  # both name the field at fault
        check_epochs(spec.evaluation.diagnostics, method)
        selection = select_subnets(
            space,
            info.num_classes,
            spec.evaluation.selection,
            spec.evaluation.subnets,
            spec.seed,
            spec.evaluation.constraint,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    ev = spec.evaluation
    return Plan(
        spec=spec,
        work=work,
        run_dir=run_dir,
        dataset=info,
        training=_training_allocation(spec),
        evaluation=_allocation(spec, ev.gpus_per_worker, ev.cpus_per_worker, 1),
        training_method=method,
        subnets=selection.subnets,
        subnet_macs=tuple(profile_subnet(space, c, info.num_classes).macs for c in selection.subnets),
        selection=selection.details,
        phases=_phases(method, method.epochs),
        stages=method.stages(),
        steps_per_epoch=steps,
        global_batch=global_batch,
        mac_range=(
            profile_subnet(space, space.smallest(), info.num_classes).macs,
            profile_subnet(space, space.largest(), info.num_classes).macs,
        ),
    )
