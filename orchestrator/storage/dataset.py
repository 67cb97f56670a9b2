"""One results dataset across runs: every run's Parquet tables, read together.

Each run keeps its own files under the storage root (`<root>/<run>/epochs.parquet`,
`subnets.parquet`, and the diagnostics tables), written atomically by `RunStore`.
Together they form one dataset partitioned by run directory: a table is the set of
its per-run files, so a reader that names runs (or a group) opens only their files,
and reads only the columns it asks for. The schema of each table is declared in
`orchestrator/storage/schemas.py`; older files without a newer column read it as null.

    pyarrow:  results_dataset("runs", "subnets").to_table(filter=ds.field("method") == "deps")
    pandas:   results_dataset("runs", "subnets").to_table().to_pandas()
    DuckDB:   SELECT * FROM read_parquet('runs/*/subnets.parquet', union_by_name = true)
              (or register_duckdb(con, "runs") for views named after the tables)

docs/RESULTS.md documents every column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.storage.run_store import (
    CLASS_CORRELATION_FILE,
    EPOCHS_FILE,
    GRADIENTS_FILE,
    SUBNETS_FILE,
)
from orchestrator.storage.schemas import CLASS_CORRELATION_SCHEMA, EPOCH_SCHEMA, GRADIENT_SCHEMA, SUBNET_SCHEMA

TABLES: dict[str, tuple[str, pa.Schema]] = {
    "epochs": (EPOCHS_FILE, EPOCH_SCHEMA),
    "subnets": (SUBNETS_FILE, SUBNET_SCHEMA),
    "class_correlation": (CLASS_CORRELATION_FILE, CLASS_CORRELATION_SCHEMA),
    "gradients": (GRADIENTS_FILE, GRADIENT_SCHEMA),
}


def _table(name: str) -> tuple[str, pa.Schema]:
    if name not in TABLES:
        raise ValueError(f"unknown results table {name!r}; tables: {', '.join(TABLES)}")
    return TABLES[name]


def is_run_dir(path: Path) -> bool:
    """A directory holding at least one results table."""
    return path.is_dir() and any((path / file).is_file() for file, _ in TABLES.values())


def run_dirs(root: Path | str) -> list[Path]:
    """The run directories under a storage root, by name."""
    root = Path(root)
    return sorted(d for d in root.iterdir() if is_run_dir(d)) if root.is_dir() else []


def table_files(dirs: Iterable[Path], table: str) -> list[Path]:
    file, _ = _table(table)
    return [d / file for d in dirs if (d / file).is_file()]


def results_dataset(source: Path | str | Sequence[Path], table: str) -> ds.Dataset:
    """A table of many runs as one `pyarrow.dataset`: all runs under a root, or the run directories given."""
    _, schema = _table(table)
    dirs = run_dirs(source) if isinstance(source, (str, Path)) else list(source)
    return ds.dataset([str(f) for f in table_files(dirs, table)], schema=schema, format="parquet")


def read_run_table(run_dir: Path, table: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One run's table (only `columns` if given); an empty table if the run has none."""
    file, schema = _table(table)
    path = run_dir / file
    if not path.is_file():
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    data = ds.dataset(str(path), schema=schema, format="parquet")
    return data.to_table(columns=list(columns)) if columns is not None else data.to_table()


def group_of(run_dir: Path) -> str | None:
    """The comparison group a run belongs to: from its plan.json, else from its Parquet footers' statistics."""
    plan = run_dir / "plan.json"
    if plan.is_file():
        try:
            group = json.loads(plan.read_text()).get("group")
        except (OSError, ValueError):
            group = None
        if group:
            return str(group)
    for path in table_files([run_dir], "epochs") + table_files([run_dir], "subnets"):
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


def runs_in_group(root: Path | str, group: str) -> list[Path]:
    return [d for d in run_dirs(root) if group_of(d) == group]


def groups(root: Path | str) -> list[str]:
    return sorted({g for d in run_dirs(root) if (g := group_of(d)) is not None})


def register_duckdb(connection, root: Path | str) -> list[str]:
    """Create a DuckDB view per results table over every run under `root`; returns the view names."""
    views, dirs = [], run_dirs(root)
    for name in TABLES:
        files = table_files(dirs, name)
        if not files:
            continue
        listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        connection.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)"
        )
        views.append(name)
    return views
