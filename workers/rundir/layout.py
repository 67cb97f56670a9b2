"""Every path under a run directory, named in one place, and the one way JSON is written there.

`RunDir` knows the name of every file a run keeps; no other module spells one
out. JSON files are written atomically (a temporary file in the same directory,
then a rename), so a reader sees the old content or the new, never half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    # -- the run's records -------------------------------------------------------------------------------------
    @property
    def plan(self) -> Path:
        """The resolved plan (`PlanRecord`), written when the run is submitted."""
        return self.path / "plan.json"

    @property
    def worker_spec(self) -> Path:
        """The resolved spec the workers were given (`WorkerSpec`): what `deps-orch export` rebuilds a net from."""
        return self.path / "worker_spec.json"

    @property
    def tracking(self) -> Path:
        """Where the run's MLflow record is (`orchestrator/tracking.py`): its URI, run id and epochs logged."""
        return self.path / "tracking.json"

    @property
    def latency_table(self) -> Path:
        """The per-block latency lookup table measured on one device (`workers/latency.py`)."""
        return self.path / "latency_table.json"

    @property
    def state(self) -> Path:
        """The run's state, its reason, its controller and its elapsed time (`workers/rundir/state.py`)."""
        return self.path / "state.json"

    @property
    def forecast(self) -> Path:
        return self.path / "forecast.json"

    @property
    def image_index(self) -> Path:
        """An ImageFolder dataset's files, scanned once (`workers/data/image_index.py`)."""
        return self.path / "image_index.parquet"

    @property
    def stages(self) -> Path:
        """The method's finished stages and their final checkpoints."""
        return self.path / "stages.json"

    @property
    def cancel_request(self) -> Path:
        return self.path / "cancel.json"

    @property
    def stopped(self) -> Path:
        """Why the workers stopped on purpose (a cancel, the budget), once they have."""
        return self.path / "stopped.json"

    @property
    def time_limit_notice(self) -> Path:
        """When this allocation ends, as a warning (Slurm's USR2) told it; read by the training workers."""
        return self.path / "time_limit.json"

    @property
    def attempt_counter(self) -> Path:
        return self.path / "attempts.json"

    @property
    def attempts(self) -> Path:
        """One marker per training attempt (`workers/rundir/attempts.py`)."""
        return self.path / "attempts"

    def attempt_marker(self, attempt: int) -> Path:
        return self.attempts / f"{attempt}.json"

    # -- logs and where the run ran ----------------------------------------------------------------------------
    @property
    def log(self) -> Path:
        """The run's story: states, the forecast, progress, every epoch's figures (`deps-orch logs`)."""
        return self.path / "run.log"

    @property
    def controller_log(self) -> Path:
        """The traceback of a controller that failed."""
        return self.path / "controller.log"

    @property
    def cluster(self) -> Path:
        """Where the run's Ray dashboard and metrics endpoints were."""
        return self.path / "ray.json"

    @property
    def ray_job(self) -> Path:
        """The Ray Jobs API submission that runs the driver, for `backend: ray`."""
        return self.path / "ray-job.json"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage_path: checkpoints live under <run_dir>/ray/<run>."""
        return self.path / "ray"

    @property
    def slurm(self) -> Path:
        """submitit's folder, the rendezvous files and the Slurm job record: `<run_dir>/slurm/`."""
        return self.path / "slurm"

    # -- the ledger and result tables (`workers/rundir/tables.py`) ----------------------------------------------
    @property
    def epochs(self) -> Path:
        return self.path / "epochs.parquet"

    @property
    def subnets(self) -> Path:
        return self.path / "subnets.parquet"

    @property
    def holds(self) -> Path:
        """When the run's cluster or allocation held its devices (`workers/rundir/holds.py`)."""
        return self.path / "holds.parquet"

    @property
    def lost(self) -> Path:
        return self.path / "lost.parquet"

    @property
    def class_correlation(self) -> Path:
        return self.path / "class_correlation.parquet"

    @property
    def gradients(self) -> Path:
        return self.path / "gradients.parquet"

    # -- writing and reading -----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, path: Path, data: Any) -> None:
        """Write `data` to `path` (a file of this run) atomically."""
        write_json(path, data)

    def read_json(self, path: Path) -> Any | None:
        """The JSON in `path`, or None if it is missing or unreadable (a file from another version, a crash)."""
        return read_json(path)

    def append_log(self, line: str, at: datetime | None = None) -> None:
        """Append one time-stamped line to the run's log."""
        stamp = (at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            log.write(f"{stamp} {line}\n")


_UMASK = os.umask(0o022)  # read once, while this module is imported (setting it is process-wide)
os.umask(_UMASK)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(data, indent=2, default=str))
        shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shareable(path: Path) -> None:
    """Give a file made by `mkstemp` (owner-only) the permissions an ordinary new file gets: the umask's."""
    os.chmod(path, 0o666 & ~_UMASK)


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def as_run_dir(run_dir: Path | RunDir) -> RunDir:
    """A run directory given as a path or already as a `RunDir`."""
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def run_dir_for(storage_root: Path, run: str) -> Path:
    """The run's directory under the storage root; refuses a run name that would leave the root."""
    root = Path(storage_root).expanduser().resolve()
    path = (root / run).resolve()
    if path.parent != root:
        raise ValueError(f"run name {run!r} escapes the storage root {root}")
    return path
