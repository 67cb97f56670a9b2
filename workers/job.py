"""What the workers of a run are given: the part of a job spec they read, and nothing of where they run.

`orchestrator/spec.py` assembles the whole job spec from these sections (and its
own: cluster, cost, storage, forecast) and hands every worker a `WorkerSpec`.
"""

from __future__ import annotations

from pydantic import Field

from workers.data.spec import DatasetSpec
from workers.evaluation_spec import EvaluationSpec
from workers.methods import AnyMethodConfig
from workers.optim_spec import OptimizerSpec
from workers.precision_spec import Precision
from workers.rundir.budget import BudgetSpec
from workers.sections import Section
from workers.supernet.space_spec import SpaceSpec


class WorkerSpec(Section):
    run: str
    group: str | None = None
    seed: int = 0
    dataset: DatasetSpec = DatasetSpec()
    space: SpaceSpec = SpaceSpec()
    method: AnyMethodConfig
    optimizer: OptimizerSpec = OptimizerSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    budget: BudgetSpec = BudgetSpec()
    threads: int = Field(1, ge=1, description="torch threads of one training worker (its CPUs)")
    precision: Precision = "fp32"
