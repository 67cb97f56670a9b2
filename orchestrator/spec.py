"""The job spec: YAML validated by pydantic models that reject unknown keys.

The sections the workers read (dataset, space, method, optimizer, evaluation,
budget) are defined beside the worker code that reads them and assembled here
with the orchestrator's own (cluster, cost, storage, forecast); `worker_spec()`
is what a run's workers are handed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.sweep_spec import SweepSpec
from orchestrator.sweep_trials import sweep_trials, with_values
from orchestrator.tracking_spec import TrackingSpec
from workers.data.spec import DatasetSpec
from workers.evaluation_spec import EvaluationSpec
from workers.job import WorkerSpec
from workers.methods import AnyMethodConfig
from workers.optim_spec import OptimizerSpec
from workers.precision_spec import Precision
from workers.rundir.budget import BudgetSpec
from workers.rundir.layout import run_dir_for
from workers.sections import Section
from workers.supernet.space_spec import SpaceSpec

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


class StorageSpec(Section):
    root: Path = Path("runs")


class ForecastSpec(Section):
    measure: bool = Field(True, description="time every phase on the run's workers before training")
    warmup_steps: int = Field(2, ge=0, le=100, description="untimed steps first in each phase (kernels, caches)")
    steps: int = Field(4, ge=1, le=1000, description="timed steps per phase, at least")
    max_steps: int = Field(40, ge=1, le=10000, description="timed steps per phase at most, while the median settles")
    max_seconds: float = Field(30.0, gt=0.0, description="a phase's timed steps stop after this, settled or not")
    tolerance: float = Field(
        0.02, gt=0.0, lt=1.0, description="settled: the last quarter of the steps moves the median less than this"
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> ForecastSpec:
        if self.max_steps < self.steps:
            raise ValueError(f"max_steps {self.max_steps} is below steps {self.steps}")
        return self


class JobSpec(Section):
    run: str
    seed: int = 0
    precision: Precision = Field(
        "fp32", description="the training step's: fp32, or bf16 / fp16 autocast (fp32 losses and weights)"
    )
    dataset: DatasetSpec = DatasetSpec()
    space: SpaceSpec = SpaceSpec()
    method: AnyMethodConfig | None  # required unless `methods` is given
    methods: tuple[AnyMethodConfig, ...] | None = Field(
        None, description="several methods (configs, or names for their defaults): one run each, `<run>-<method>`"
    )
    group: str | None = Field(None, description="comparison name; `methods:` sets it to the run name")
    max_concurrent: int | None = Field(
        None,
        ge=1,
        description="methods: runs at once, as Ray Tune trials (default: as many as the cluster fits; 1: in turn)",
    )
    optimizer: OptimizerSpec = OptimizerSpec()
    cluster: ClusterSpec = ClusterSpec()
    cost: CostSpec = CostSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    storage: StorageSpec = StorageSpec()
    budget: BudgetSpec = BudgetSpec()
    forecast: ForecastSpec = ForecastSpec()
    sweep: SweepSpec | None = Field(None, description="vary spec fields over trials, each an ordinary run (Ray Tune)")
    tracking: TrackingSpec = TrackingSpec()
    trial_values: dict[str, float | int | str | bool] | None = Field(
        None, description="set on a sweep's trials: the values this trial gives the swept spec paths"
    )

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
        elif self.max_concurrent is not None:
            raise ValueError("max_concurrent: runs a methods: comparison's runs at once; this spec has one method")
        return self

    @model_validator(mode="after")
    def _sweep_trials_are_specs(self) -> JobSpec:
        if self.sweep is None:
            return self
        if self.methods is not None:
            raise ValueError("sweep: varies one method's spec; give method, not methods")
        if self.max_concurrent is not None:
            raise ValueError("max_concurrent: a sweep's is sweep.max_concurrent")
        try:
            self._trial_specs()
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            path = next((p for p in self.sweep.parameters if where == p or where.startswith(p + ".")), where)
            raise ValueError(f"sweep.parameters.{path}: {first['msg']}") from None
        return self

    def _trial_specs(self) -> list[JobSpec]:
        sweep = self.sweep
        assert sweep is not None
        data = self.model_dump(mode="json", exclude={"sweep", "methods"})
        group = self.group or self.run
        trials = sweep_trials(sweep, self.run, self.seed)
        members = [str(run_dir_for(self.storage.root, t.name).resolve()) for t in trials]
        specs = []
        for trial, own in zip(trials, members):
            trial_data = with_values(data, trial.values) | {
                "run": trial.name,
                "group": group,
                "trial_values": trial.values,
            }
            validation = trial_data["evaluation"].setdefault("validation", {})
            validation |= {"enabled": True, "images": sweep.validation_images}
            if sweep.budget.limited:
                trial_data["budget"]["pool"] = {
                    "name": "sweep.budget",
                    "max_dollars": sweep.budget.max_dollars,
                    "max_device_hours": sweep.budget.max_device_hours,
                    "members": members,
                    "own": own,
                    "concurrent": min(sweep.max_concurrent or len(trials), len(trials)),
                }
            specs.append(JobSpec.model_validate(trial_data))
        return specs

    def worker_spec(self) -> WorkerSpec:
        """What this run's workers read (a spec of one run: `runs()` splits a `methods:` spec first)."""
        if self.method is None:
            raise ValueError("a spec with methods: is several runs; worker_spec() takes one of runs()")
        return WorkerSpec(
            run=self.run,
            group=self.group,
            seed=self.seed,
            dataset=self.dataset,
            space=self.space,
            method=self.method,
            optimizer=self.optimizer,
            evaluation=self.evaluation,
            budget=self.budget,
            threads=self.cluster.cpus_per_worker,
            precision=self.precision,
        )

    def runs(self) -> list[JobSpec]:
        """One spec per run: itself, one per entry of `methods`, named `<run>-<method>`, or one per trial of
        `sweep` (`orchestrator/sweep_trials.py`), each grouped under the spec's run name."""
        if self.sweep is not None:
            return self._trial_specs()
        if self.methods is None:
            return [self]
        group = self.group or self.run
        return [
            self.model_copy(
                update={
                    "run": f"{self.run}-{config.run_label()}",
                    "method": config,
                    "methods": None,
                    "group": group,
                    "max_concurrent": None,
                }
            )
            for config in self.methods
        ]
