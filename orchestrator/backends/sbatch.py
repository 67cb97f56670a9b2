"""What `cluster.slurm` asks Slurm for: submitit's parameters and the sbatch options they become.

Pure functions of the spec, so `--dry-run` shows exactly what a submission
would ask for. Every user-given value ends up shell-quoted in the script:
submitit quotes `#SBATCH` values (sbatch strips the quotes again), the
environment exports are quoted here, and the spec refuses line breaks and
other control characters in all of them.
"""

from __future__ import annotations

import shlex
from typing import Any

from orchestrator.spec import JobSpec, SlurmSpec

# The job's Ray processes and our job function run one task per node.
TASKS_PER_NODE = 1


def job_name(spec: JobSpec) -> str:
    slurm = _slurm(spec)
    return slurm.job_name or f"deps-{spec.run}"


def _slurm(spec: JobSpec) -> SlurmSpec:
    if spec.cluster.slurm is None:
        raise ValueError("not a Slurm spec: cluster.backend is not slurm")
    return spec.cluster.slurm


def mem_option(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{int(round(mem_gb * 1024))}M"


def environment_lines(spec: JobSpec) -> list[str]:
    """`export` lines for cluster.slurm.env, each value quoted."""
    return [f"export {key}={shlex.quote(value)}" for key, value in sorted(_slurm(spec).env.items())]


def submitit_parameters(spec: JobSpec) -> dict[str, Any]:
    """Keyword arguments for submitit's SlurmExecutor.update_parameters."""
    slurm, cluster = _slurm(spec), spec.cluster
    params: dict[str, Any] = {
        "job_name": job_name(spec),
        "time": slurm.time_minutes,
        "nodes": slurm.nodes,
        "ntasks_per_node": TASKS_PER_NODE,
        "cpus_per_task": cluster.slurm_cpus_per_node,
        "signal_delay_s": slurm.signal_seconds,
        # Slurm's own preemption may requeue the job too (clusters can default JobRequeue to 0).
        # False means "leave the option out" (submitit would write --option=False).
        "additional_parameters": {"requeue": True, **{k: v for k, v in slurm.extra_sbatch.items() if v is not False}},
    }
    if slurm.gpus_per_node:
        params["gpus_per_node"] = slurm.gpus_per_node
    for name in ("partition", "account", "qos", "constraint"):
        value = getattr(slurm, name)
        if value is not None:
            params[name] = value
    if slurm.mem_gb is not None:
        params["mem"] = mem_option(slurm.mem_gb)
    setup = environment_lines(spec)
    if setup:
        params["setup"] = setup
    return params


def sbatch_options(spec: JobSpec) -> dict[str, Any]:
    """The `#SBATCH --name=value` options of the job (without the log paths, which depend on the job id)."""
    params = submitit_parameters(spec)
    options: dict[str, Any] = {}
    for key in ("job_name", "partition", "account", "qos", "time", "nodes", "ntasks_per_node", "cpus_per_task"):
        if key in params:
            options[key.replace("_", "-")] = params[key]
    for key in ("gpus_per_node", "mem", "constraint"):
        if key in params:
            options[key.replace("_", "-")] = params[key]
    options["signal"] = f"USR2@{params['signal_delay_s']}"
    options.update(params["additional_parameters"])
    options["wckey"] = "submitit"
    return options


def sbatch_script(spec: JobSpec, folder: str, python: str) -> str:
    """The batch script submitit writes for this spec (the job id is filled in as %j by Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own renderer: what sbatch will receive

    params = submitit_parameters(spec)
    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, **params)
