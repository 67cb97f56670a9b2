"""Finding runs under a storage root: one discovery for `status`, `cost-report` and `compare`.

A run directory is one that holds any of a run's records (its plan, its state, a
ledger or results table). A run's comparison group comes from its plan, or, where
the plan is missing, from its Parquet footers. Runs are listed in the order they
were submitted (their plan's time, else their oldest record's), so every command
picks the same members of a group, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from orchestrator.errors import UserError
from workers.rundir.layout import RunDir
from workers.rundir.plan_record import PlanRecord


def _records(files: RunDir) -> list[Path]:
    candidates = (files.plan, files.state, files.epochs, files.subnets, files.lost)
    return [p for p in candidates if p.is_file()]


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and bool(_records(RunDir(path)))


def _footer_group(files: RunDir) -> str | None:
    """The group every row of the run's tables names, from the Parquet footers' statistics (or the column)."""
    for path in (files.epochs, files.subnets, files.lost):
        if not path.is_file():
            continue
        meta = pq.ParquetFile(path).metadata
        names = meta.schema.names
        if "group" not in names or meta.num_row_groups == 0:
            continue
        stats = meta.row_group(0).column(names.index("group")).statistics
        if stats is not None and stats.has_min_max and stats.min == stats.max:
            return stats.min if isinstance(stats.min, str) else stats.min.decode()
        values = pq.read_table(path, columns=["group"]).column("group").unique().to_pylist()
        if len(values) == 1 and values[0]:
            return values[0]
    return None


def group_of(run_dir: Path) -> str | None:
    """The comparison group a run belongs to: from its plan, else from its Parquet footers."""
    files = RunDir(run_dir)
    plan = PlanRecord.read(files)
    if plan is not None and plan.group:
        return plan.group
    return _footer_group(files)


@dataclass(frozen=True)
class RunRef:
    path: Path
    group: str | None
    submitted_at: float  # the plan's time, else the oldest record's
    updated_at: float  # the newest record's

    @property
    def name(self) -> str:
        return self.path.name


def _ref(path: Path) -> RunRef:
    files = RunDir(path)
    times = {p: p.stat().st_mtime for p in _records(files)}
    submitted = times.get(files.plan, min(times.values()))
    return RunRef(path, group_of(path), submitted, max(times.values()))


def discover_runs(root: Path) -> list[RunRef]:
    """Every run under the storage root, in the order they were submitted."""
    if not root.is_dir():
        return []
    refs = [_ref(p) for p in root.iterdir() if is_run_dir(p)]
    return sorted(refs, key=lambda r: (r.submitted_at, r.name))


def runs_in_group(root: Path, group: str) -> list[Path]:
    return [r.path for r in discover_runs(root) if r.group == group]


def groups(root: Path) -> list[str]:
    return sorted({r.group for r in discover_runs(root) if r.group})


def find_run_dir(name_or_path: str, root: Path) -> Path:
    """A run directory, or a run name under the storage root."""
    path = Path(name_or_path)
    for candidate in (path, root / name_or_path):
        if is_run_dir(candidate):
            return candidate
    raise UserError(f"{name_or_path}: no run there (no plan, state or results in {path} or {root / name_or_path})")


def resolve_runs(names: list[str], root: Path) -> list[Path]:
    """Run directories from run directories, run names under `root`, or comparison names (all their runs)."""
    found: list[Path] = []
    for name in names:
        path = Path(name)
        run = next((c for c in (path, root / name) if is_run_dir(c)), None)
        members = [run] if run is not None else runs_in_group(root, name)
        if not members:
            known = groups(root)
            raise UserError(
                f"{name}: no run there (no plan, state or results in {path} or {root / name}) and no comparison "
                f"of that name under {root}" + (f" (comparisons there: {', '.join(known)})" if known else "")
            )
        found += [m for m in members if m.resolve() not in {f.resolve() for f in found}]
    return found
