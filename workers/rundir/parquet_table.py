"""A Parquet file updated atomically: rows are upserted by key, never duplicated.

Writers take an exclusive lock beside the file, read what is there, replace
rows whose key matches, write a temporary file in the same directory and
rename it over the old one, so a reader sees the old table or the new one,
never a partial file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workers.rundir.layout import shareable


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomic(path: Path, table: pa.Table) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rows(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.exists():
        return schema.empty_table()
    return pq.read_table(path, schema=schema)


def upsert_rows(path: Path, rows: Sequence[dict], schema: pa.Schema, key: Sequence[str]) -> pa.Table:
    """Insert `rows`, replacing any existing row with the same `key` values; returns the new table."""
    new = pa.Table.from_pylist(list(rows), schema=schema)
    with _locked(path):
        old = read_rows(path, schema)
        new_keys = {tuple(r[k] for k in key) for r in new.select(list(key)).to_pylist()}
        keep = [tuple(r[k] for k in key) not in new_keys for r in old.select(list(key)).to_pylist()]
        table = pa.concat_tables([old.filter(pa.array(keep, type=pa.bool_())), new]) if len(old) else new
        table = table.sort_by([(k, "ascending") for k in key])
        write_atomic(path, table)
    return table
