"""Report tables declared as column lists, rendered as aligned text, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = ""  # format spec for the text table, e.g. ".2f"


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if fmt else str(value)


def render(columns: Sequence[Column], rows: Sequence[dict], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([{c.key: r.get(c.key) for c in columns} for r in rows], indent=2, default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[c.key for c in columns], lineterminator="\n")
        writer.writeheader()
        writer.writerows({c.key: r.get(c.key) for c in columns} for r in rows)
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    cells = [[c.header for c in columns]] + [[_cell(r.get(c.key), c.fmt) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) if j else v.ljust(w) for j, (v, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
