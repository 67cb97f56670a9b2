"""The backend interface: where a run's Ray cluster comes from, and how a submission reaches it.

A backend describes its part of the plan (what it asks a scheduler for), launches
a submission (running its stages in this process, or sending it to a driver
elsewhere and following it), follows a submission already running, provides the
cluster a driver runs stages on, and cancels a run. The plan, the controller and
the CLI know none of them by name: `orchestrator/backends/__init__.py` looks them
up by the spec's `cluster.backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ClassVar

from orchestrator.cancel import cancel_run
from orchestrator.plan import Plan
from orchestrator.runner import Submission
from orchestrator.spec import JobSpec
from workers.rundir.layout import RunDir

Echo = Callable[[str], None]


class Backend(ABC):
    name: ClassVar[str]
    # `submit --dry-run` may start a cluster of this kind just to measure the forecast.
    measures_dry_run: ClassVar[bool] = False
    # What holds a run's devices while its stages run here (the `kind` of its rows in holds.parquet).
    hold_kind: ClassVar[str] = "ray cluster"

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    @abstractmethod
    def describe(self, plan: Plan) -> dict:
        """This backend's part of the plan's `cluster` section: what it will ask for, and where."""

    @abstractmethod
    def launch(self, submission: Submission, echo: Echo) -> int:
        """Run the submission, here or elsewhere, and follow it to its end (or detach); returns the exit code."""

    @abstractmethod
    def cluster(self) -> AbstractContextManager[None]:
        """The Ray cluster that a run's stages, executing in this process, run on."""

    def follow(self, submission: Submission, echo: Echo) -> int | None:
        """Follow the submission if it is already running elsewhere (its exit code), else None."""
        return None

    @classmethod
    def cancel(cls, run_dir: RunDir, after_epoch: bool, wait_seconds: float, echo: Echo) -> int:
        """`deps-orch cancel`: stop the run, keeping its last checkpoint; returns the exit code.

        It reads what it needs from the run directory (the job a backend recorded there), not from a spec.
        """
        return cancel_run(run_dir, after_epoch, wait_seconds, echo)
