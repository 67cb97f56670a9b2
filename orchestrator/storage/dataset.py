"""One results dataset across runs: every run's Parquet tables, read together.

Each run keeps its own files under the storage root (`<root>/<run>/epochs.parquet`,
`subnets.parquet`, and the diagnostics tables), written atomically by `RunStore`.
Together they form one dataset partitioned by run directory: a table is the set of
its per-run files, so a reader that names runs (or a group) opens only their files,
and reads only the columns it asks for. The schema of each table is declared in
`workers/rundir/schemas.py`; older files without a newer column read it as null. Which
directories are runs, and which group each belongs to, is `orchestrator/storage/discovery.py`.

    pyarrow:  results_dataset("runs", "subnets").to_table(filter=ds.field("method") == "deps")
    pandas:   results_dataset("runs", "subnets").to_table().to_pandas()
    DuckDB:   SELECT * FROM read_parquet('runs/*/subnets.parquet', union_by_name = true)
              (or register_duckdb(con, "runs") for views named after the tables)

docs/RESULTS.md documents every column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from orchestrator.storage.discovery import discover_runs, group_of, groups, runs_in_group
from workers.rundir.layout import RunDir
from workers.rundir.schemas import (
    CLASS_CORRELATION_SCHEMA,
    EPOCH_SCHEMA,
    GRADIENT_SCHEMA,
    LOST_SCHEMA,
    SUBNET_SCHEMA,
)

# Each table's file is the `RunDir` path of the same name.
TABLES: dict[str, pa.Schema] = {
    "epochs": EPOCH_SCHEMA,
    "subnets": SUBNET_SCHEMA,
    "lost": LOST_SCHEMA,
    "class_correlation": CLASS_CORRELATION_SCHEMA,
    "gradients": GRADIENT_SCHEMA,
}
__all__ = ["TABLES", "group_of", "groups", "read_run_table", "register_duckdb", "results_dataset", "run_dirs"]
__all__ += ["runs_in_group", "table_files"]


def _table(name: str) -> pa.Schema:
    if name not in TABLES:
        raise ValueError(f"unknown results table {name!r}; tables: {', '.join(TABLES)}")
    return TABLES[name]


def _file(run_dir: Path, table: str) -> Path:
    _table(table)
    return getattr(RunDir(run_dir), table)


def run_dirs(root: Path | str) -> list[Path]:
    """The run directories under a storage root, in the order they were submitted."""
    return [r.path for r in discover_runs(Path(root))]


def table_files(dirs: Iterable[Path], table: str) -> list[Path]:
    return [_file(d, table) for d in dirs if _file(d, table).is_file()]


def results_dataset(source: Path | str | Sequence[Path], table: str) -> ds.Dataset:
    """A table of many runs as one `pyarrow.dataset`: all runs under a root, or the run directories given."""
    schema = _table(table)
    dirs = run_dirs(source) if isinstance(source, (str, Path)) else list(source)
    return ds.dataset([str(f) for f in table_files(dirs, table)], schema=schema, format="parquet")


def read_run_table(run_dir: Path, table: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One run's table (only `columns` if given); an empty table if the run has none."""
    schema, path = _table(table), _file(run_dir, table)
    if not path.is_file():
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    data = ds.dataset(str(path), schema=schema, format="parquet")
    return data.to_table(columns=list(columns)) if columns is not None else data.to_table()


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
