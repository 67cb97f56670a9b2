"""The job spec: YAML validated by pydantic models that reject unknown keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.diagnostics import DiagnosticsConfig
from workers.methods import AnyMethodConfig
from workers.selection import AnySelection, SpreadSelection

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Section):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: Path | None = None
    resolution: int = Field(32, ge=8, le=1024)
    train_subset: int | None = Field(None, gt=0, description="use only the first N training images")
    test_subset: int | None = Field(None, gt=0, description="use only the first N test images")
    batch_size: int = Field(64, gt=0, description="images per worker per step")
    loader_workers: int = Field(0, ge=0)
    auto_augment: bool = False

    @model_validator(mode="after")
    def _root_given(self) -> DatasetSpec:
        if self.name != "digits" and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs dataset.root")
        return self


class SpaceSpec(Section):
    name: Literal["ofa_mobilenetv3", "ofa_proxyless"] = "ofa_mobilenetv3"
    kernel_choices: tuple[Literal[3, 5, 7], ...] = (3, 5, 7)
    expand_choices: tuple[float, ...] = (3, 4, 6)
    depth_choices: tuple[Literal[1, 2, 3, 4], ...] = (2, 3, 4)
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    cifar_variant: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.01, gt=0.0, le=1.0)
    kernel_transforms: bool = Field(False, description="OFA's learned 7->5->3 kernel-transform matrices")

    @field_validator("kernel_choices", "expand_choices", "depth_choices")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("needs at least one choice")
        if len(set(value)) != len(value):
            raise ValueError(f"repeated choice in {list(value)}")
        return tuple(sorted(value))

    @field_validator("expand_choices")
    @classmethod
    def _positive_expand(cls, value: tuple) -> tuple:
        if any(e <= 0 for e in value):
            raise ValueError("expand ratios must be positive")
        return value


class OptimizerSpec(Section):
    name: Literal["sgd", "rmsprop"] = "sgd"
    lr: float = Field(0.1, gt=0.0, description="learning rate per `lr_batch` images; scaled to the global batch")
    lr_batch: int = Field(128, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = Field(True, description="SGD only")
    rmsprop_decay: float = Field(0.9, gt=0.0, lt=1.0, description="RMSProp's squared-gradient average (torch alpha)")
    rmsprop_eps: float = Field(1e-3, gt=0.0, description="RMSProp's epsilon, added to the root (torch convention)")
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay_on_bn_and_bias: bool = True
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lr_floor: float = Field(2.5e-3, ge=0.0, description="the cosine schedule never goes below this LR")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear LR warmup at the start of the run")
    grad_clip_norm: float | None = Field(None, gt=0.0)


SBATCH_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# sbatch options that cluster.slurm sets itself (or that would break the job): not allowed in extra_sbatch.
MANAGED_SBATCH_OPTIONS = {
    "job-name": "job_name",
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "time": "time_minutes",
    "nodes": "nodes",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_node",
    "mem": "mem_gb",
    "constraint": "constraint",
    "ntasks-per-node": "",
    "ntasks": "",
    "output": "",
    "error": "",
    "signal": "signal_seconds",
    "open-mode": "",
    "array": "",
    "wrap": "",
}


def _plain_text(value: str, what: str) -> str:
    """Values that go into a generated script: any text, but never a line break or other control character."""
    if CONTROL_CHARACTERS.search(value):
        raise ValueError(f"{what}: control characters (line breaks, tabs, ...) are not allowed in {value!r}")
    return value


class SlurmSpec(Section):
    """The allocation `cluster.backend: slurm` asks Slurm for; every value is quoted in the generated sbatch script."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_minutes: int = Field(60, ge=1, description="time limit of one allocation; a longer run is requeued at it")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = Field(None, ge=1, description="default: the CPUs of the workers on one node")
    mem_gb: float | None = Field(None, gt=0.0, description="memory per node")
    constraint: str | None = Field(None, description="node features, e.g. a40")
    job_name: str | None = Field(None, description="default: deps-<run>")
    extra_sbatch: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more sbatch options, e.g. {exclusive: true, mail-type: END}"
    )
    env: dict[str, str] = Field(default_factory=dict, description="environment variables exported in the job")
    max_timeouts: int = Field(3, ge=0, description="requeues after hitting the time limit (preemptions are free)")
    signal_seconds: int = Field(120, ge=10, description="Slurm signals this long before the time limit to requeue")
    price_per_device_hour: float | None = Field(
        None, ge=0.0, description="this cluster's internal price per GPU-hour (per vCPU-hour for CPU jobs)"
    )
    price_source: str | None = Field(None, description="where that internal price comes from")
    nodes_timeout_s: float = Field(300.0, gt=0.0, description="how long the head waits for the other nodes' Ray")

    @field_validator("partition", "account", "qos", "constraint", "job_name", "price_source")
    @classmethod
    def _text(cls, value: str | None, info) -> str | None:
        return None if value is None else _plain_text(value, info.field_name)

    @field_validator("extra_sbatch")
    @classmethod
    def _extra_options(cls, value: dict) -> dict:
        options = {}
        for key, option in value.items():
            name = key.replace("_", "-")
            if not SBATCH_OPTION.match(name):
                raise ValueError(f"{key!r} is not an sbatch option name (lower-case letters, digits and '-')")
            if name in MANAGED_SBATCH_OPTIONS:
                field = MANAGED_SBATCH_OPTIONS[name]
                raise ValueError(f"{key!r} is set by deps-orch" + (f"; use cluster.slurm.{field}" if field else ""))
            if isinstance(option, str):
                _plain_text(option, f"extra_sbatch.{key}")
            options[name] = option
        return options

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict) -> dict:
        for key, text in value.items():
            if not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            _plain_text(text, f"env.{key}")
        return value


class ClusterSpec(Section):
    backend: Literal["local", "slurm", "ray"] = "local"
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)
    accelerator: str | None = Field(None, description="device type for GPU runs, e.g. A40")
    max_failures: int = Field(3, ge=0, description="worker-group restarts Ray Train may make")
    address: str | None = Field(
        None, description="backend ray: the cluster's dashboard URL (Jobs API), or 'auto' on a node of the cluster"
    )
    python: str | None = Field(
        None, description="the interpreter with deps-orch installed on the cluster; default: the one running deps-orch"
    )
    expose_dashboard: bool = Field(
        False, description="bind the Ray dashboard (and its Jobs API) to all interfaces instead of 127.0.0.1"
    )
    slurm: SlurmSpec | None = Field(None, description="backend slurm: the allocation")

    @model_validator(mode="after")
    def _accelerator_named(self) -> ClusterSpec:
        if self.gpus_per_worker > 0 and not self.accelerator:
            raise ValueError("cluster.accelerator must name the GPU type when gpus_per_worker > 0")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_slurm(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("backend") == "slurm" and data.get("slurm") is None:
            return {**data, "slurm": {}}
        return data

    @model_validator(mode="after")
    def _backend_fields(self) -> ClusterSpec:
        if self.backend == "ray" and not self.address:
            raise ValueError("cluster.address is needed for backend ray: the dashboard URL (http://host:8265) or auto")
        if self.address is not None and self.backend != "ray":
            raise ValueError(f"cluster.address is for backend ray, not {self.backend}")
        if self.address is not None and self.address != "auto" and not re.match(r"^https?://[^\s]+$", self.address):
            raise ValueError(f"cluster.address: {self.address!r} is not an http(s) URL or auto")
        if self.slurm is not None and self.backend != "slurm":
            raise ValueError(f"cluster.slurm is for backend slurm, not {self.backend}")
        if self.python is not None:
            _plain_text(self.python, "cluster.python")
        if self.backend == "slurm":
            slurm = self.slurm
            assert slurm is not None  # _default_slurm fills it in
            needed_gpus = self.num_workers * self.gpus_per_worker
            held_gpus = slurm.nodes * slurm.gpus_per_node
            if needed_gpus != held_gpus:
                raise ValueError(
                    f"cluster: {self.num_workers} workers x {self.gpus_per_worker} GPUs = {needed_gpus}, but "
                    f"cluster.slurm asks for {slurm.nodes} nodes x {slurm.gpus_per_node} GPUs = {held_gpus}"
                )
            if self.num_workers < slurm.nodes:
                raise ValueError(f"cluster: {self.num_workers} workers cannot use {slurm.nodes} nodes")
            per_node = self.slurm_workers_per_node * self.cpus_per_worker
            if slurm.cpus_per_node is not None and slurm.cpus_per_node < per_node:
                raise ValueError(
                    f"cluster.slurm.cpus_per_node: {slurm.cpus_per_node}, but {self.slurm_workers_per_node} workers "
                    f"x {self.cpus_per_worker} CPUs on a node need {per_node}"
                )
        return self

    @property
    def slurm_workers_per_node(self) -> int:
        nodes = self.slurm.nodes if self.slurm is not None else 1
        return -(-self.num_workers // nodes)

    @property
    def slurm_cpus_per_node(self) -> int:
        """CPUs asked per node: as given, or what the workers on one node need."""
        given = self.slurm.cpus_per_node if self.slurm is not None else None
        return given or self.slurm_workers_per_node * self.cpus_per_worker

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CostSpec(Section):
    pricing: Literal["on_demand", "spot"] = "on_demand"
    price_per_device_hour: float | None = Field(None, ge=0.0, description="overrides the catalog")
    catalog: Path | None = Field(None, description="a price catalog YAML replacing the shipped one")


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
    subnets_per_task: int | None = Field(None, ge=1, description="subnets per actor task; default: automatic")
    max_restarts: int = Field(2, ge=0, description="restarts of a dead actor; its unfinished task is retried")
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()


class StorageSpec(Section):
    root: Path = Path("runs")


class BudgetSpec(Section):
    """Limits on a run's spend (training and evaluation); the run stops cleanly before it would pass them."""

    max_dollars: float | None = Field(None, gt=0.0)
    max_device_hours: float | None = Field(None, gt=0.0, description="GPU-hours, or vCPU-hours for CPU runs")

    @property
    def limited(self) -> bool:
        return self.max_dollars is not None or self.max_device_hours is not None


class ForecastSpec(Section):
    measure: bool = Field(True, description="time every phase on the run's workers before training")
    steps: int = Field(4, ge=1, le=1000, description="timed steps per phase")


class JobSpec(Section):
    run: str
    seed: int = 0
    dataset: DatasetSpec = DatasetSpec()
    space: SpaceSpec = SpaceSpec()
    method: AnyMethodConfig | None  # required unless `methods` is given
    methods: tuple[AnyMethodConfig, ...] | None = Field(
        None, description="several methods (configs, or names for their defaults): one run each, `<run>-<method>`"
    )
    group: str | None = Field(None, description="comparison name; `methods:` sets it to the run name")
    optimizer: OptimizerSpec = OptimizerSpec()
    cluster: ClusterSpec = ClusterSpec()
    cost: CostSpec = CostSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    storage: StorageSpec = StorageSpec()
    budget: BudgetSpec = BudgetSpec()
    forecast: ForecastSpec = ForecastSpec()

    @field_validator("run", "group")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a run name: letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _methods_by_name(cls, data: object) -> object:
        """`methods: [deps, ofa]` means their default configs; with `methods`, `method` may be left out."""
        if isinstance(data, dict) and data.get("methods") is not None:
            data = {"method": None, **data}
            if isinstance(data["methods"], list):
                data["methods"] = [{"name": m} if isinstance(m, str) else m for m in data["methods"]]
        return data

    @model_validator(mode="after")
    def _one_method_field(self) -> JobSpec:
        if (self.method is None) == (self.methods is None):
            raise ValueError("give method (one run) or methods (one run per method, compared), not both")
        if self.methods is not None:
            if not self.methods:
                raise ValueError("methods: needs at least one method")
            seen: dict[str, int] = {}
            for i, config in enumerate(self.methods):
                run = f"{self.run}-{config.run_label()}"
                if run in seen:
                    raise ValueError(
                        f"methods[{i}] and methods[{seen[run]}] would both be run {run!r}; "
                        "compare variants of one method in separate specs that share `group:`"
                    )
                if not RUN_NAME.match(run):
                    raise ValueError(f"methods[{i}]: run name {run!r} is too long or not a run name")
                seen[run] = i
        return self

    def runs(self) -> list[JobSpec]:
        """One spec per run: itself, or one per entry of `methods`, named `<run>-<method>` and grouped."""
        if self.methods is None:
            return [self]
        group = self.group or self.run
        return [
            self.model_copy(
                update={"run": f"{self.run}-{config.run_label()}", "method": config, "methods": None, "group": group}
            )
            for config in self.methods
        ]
