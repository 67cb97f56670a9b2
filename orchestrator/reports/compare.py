"""`deps-orch compare`: the comparison the papers make, from the runs' Parquet results.

Per run (one method each): the smallest and largest evaluated subnets' top-1 and
MACs, the best subnet per FLOP bucket, the mean Pareto accuracy, epochs,
device-minutes per epoch, device-hours and dollars for training and evaluation,
and the accuracy gained per dollar.

Where the subnets were timed (`latency_ms`, batch 1 on the evaluation workers'
device), the same best-per-bucket table is made over latency: the most accurate
subnet under each latency bound, over the comparison's common latency range.
Latency only compares across runs timed on the same device; the table names them.

Mean Pareto accuracy normalises MACs over each run's own supernet range (from its
plan; from its evaluated subnets if it has none), as the DepS paper defines it. The
FLOP buckets span one range for the whole comparison, from the smallest to the
largest subnet of the supernets compared, so each bucket row compares like with
like. When the supernets' ranges differ (CompOFA's coupled space starts higher), the
table also gives every run's range and its mean Pareto accuracy over the common
range, where budgets it cannot serve count as 0.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.reports.cost_report import run_costs
from orchestrator.reports.pareto import Point, best_per_bucket, mean_pareto_accuracy
from orchestrator.storage.dataset import read_run_table
from orchestrator.storage.discovery import group_of, groups, runs_in_group
from orchestrator.storage.discovery import resolve_runs as resolve_names
from workers.flop_buckets import FlopBuckets
from workers.rundir.plan_record import PlanRecord

FORMATS = ("markdown", "csv", "json")
DEFAULT_BUCKETS = 6


@dataclass(frozen=True)
class RunResults:
    """What a comparison needs of one run, read from its results (only the columns used)."""

    name: str
    run_dir: Path
    method: str | None
    group: str | None
    costs: dict
    points: list[Point]
    latency_points: list[Point]  # (latency ms at batch 1, top-1) of the subnets that were timed
    latency_devices: tuple[str, ...]
    mac_range: tuple[int, int] | None  # the supernet's, from the plan
    num_classes: int | None
    trial_values: dict | None = None  # a sweep trial's values of the swept spec paths
    final_metrics: dict | None = None  # the last epoch's per-epoch metric (val_top1, val_top1_smallest), if taken


@dataclass
class Comparison:
    title: str
    runs: list[RunResults]
    buckets: FlopBuckets | None
    rows: list[dict] = field(default_factory=list)
    latency_buckets: FlopBuckets | None = None  # the same equal split, over milliseconds

    @property
    def range_mmacs(self) -> tuple[float, float] | None:
        return (self.buckets.lo / 1e6, self.buckets.hi / 1e6) if self.buckets else None


def load_run(run_dir: Path) -> RunResults:
    plan = PlanRecord.read(run_dir)
    columns = ["subnet_id", "macs", "top1", "latency_ms", "latency_device"]
    subnets = read_run_table(run_dir, "subnets", columns).to_pylist()
    timed = [r for r in subnets if r["latency_ms"] is not None]
    costs = run_costs(run_dir)
    epochs = read_run_table(run_dir, "epochs", ["epoch", "val_top1", "val_top1_smallest"]).to_pylist()
    last = max(epochs, key=lambda r: r["epoch"]) if epochs else None
    return RunResults(
        name=costs["run"],
        run_dir=run_dir,
        method=costs["method"] or (plan.method if plan is not None else None),
        group=group_of(run_dir),
        costs=costs,
        points=[Point(r["macs"], r["top1"], r["subnet_id"]) for r in subnets],
        latency_points=[Point(r["latency_ms"], r["top1"], r["subnet_id"]) for r in timed],
        latency_devices=tuple(sorted({r["latency_device"] for r in timed})),
        mac_range=plan.mac_range if plan is not None else None,
        num_classes=plan.num_classes if plan is not None else None,
        trial_values=plan.trial_values if plan is not None else None,
        final_metrics={k: v for k, v in last.items() if k != "epoch"} if last else None,
    )


def resolve_runs(runs: Sequence[str], group: str | None, root: Path) -> list[Path]:
    """Run directories from names under `root` or paths, or every run of a comparison group."""
    if bool(runs) == bool(group):
        raise UserError("compare: name runs (RUN ...) or a comparison (--group NAME), not both and not neither")
    if group:
        found = runs_in_group(root, group)
        if not found:
            known = groups(root)
            raise UserError(
                f"--group {group}: no runs of that comparison under {root} "
                f"({'comparisons there: ' + ', '.join(known) if known else 'no run there records a comparison group'})"
            )
        return found
    return resolve_names(list(runs), root)


def _own_range(run: RunResults) -> tuple[int, int] | None:
    if run.mac_range:
        return run.mac_range
    if run.points:
        return min(p.macs for p in run.points), max(p.macs for p in run.points)
    return None


def _common_range(runs: Sequence[RunResults]) -> tuple[int, int] | None:
    ranges = [r for r in map(_own_range, runs) if r]
    if not ranges:
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def _best_per_latency_bucket(run: RunResults, buckets: FlopBuckets | None) -> list[dict]:
    if buckets is None or not run.latency_points:
        return []
    out = []
    for i, best in enumerate(best_per_bucket(run.latency_points, buckets)):
        lo, hi = buckets.bounds(i)
        out.append(
            {
                "bucket": i + 1,
                "lo_ms": lo,
                "hi_ms": hi,
                "top1": best.top1 if best else None,
                "ms": best.macs if best else None,  # a latency point's x is its milliseconds
                "subnet_id": best.subnet_id if best else None,
            }
        )
    return out


def _row(run: RunResults, buckets: FlopBuckets | None, latency_buckets: FlopBuckets | None = None) -> dict:
    costs = run.costs
    row = {
        "run": run.name,
        "method": run.method,
        "state": costs.get("state"),
        "group": run.group,
        "subnets": len(run.points),
        "smallest_top1": costs.get("smallest_top1"),
        "smallest_mmacs": costs.get("smallest_mmacs"),
        "largest_top1": costs.get("largest_top1"),
        "largest_mmacs": costs.get("largest_mmacs"),
        "range_mmacs": [m / 1e6 for m in _own_range(run)] if _own_range(run) else None,
        "mean_pareto_top1": None,
        "mean_pareto_top1_common_range": None,
        "buckets": [],
        "fastest_ms": min((p.macs for p in run.latency_points), default=None),
        "slowest_ms": max((p.macs for p in run.latency_points), default=None),
        "latency_devices": list(run.latency_devices),
        "latency_buckets": _best_per_latency_bucket(run, latency_buckets),
        "epochs": costs["epochs"],
        "device_type": costs["device_type"],
        "device_minutes_per_epoch": costs["device_minutes_per_epoch"],
        "train_device_hours": costs["train_device_hours"],
        "train_dollars": costs["train_dollars"],
        "eval_device_hours": costs["eval_device_hours"],
        "eval_dollars": costs["eval_dollars"],
        "total_dollars": costs["total_dollars"],
        "chance_top1": 100.0 / run.num_classes if run.num_classes else None,
        "top1_gain_per_dollar": None,
    }
    if buckets is not None and run.points:
        row["mean_pareto_top1"] = mean_pareto_accuracy(run.points, *_own_range(run))
        row["mean_pareto_top1_common_range"] = mean_pareto_accuracy(run.points, buckets.lo, buckets.hi)
        for i, best in enumerate(best_per_bucket(run.points, buckets)):
            lo, hi = buckets.bounds(i)
            row["buckets"].append(
                {
                    "bucket": i + 1,
                    "lo_mmacs": lo / 1e6,
                    "hi_mmacs": hi / 1e6,
                    "top1": best.top1 if best else None,
                    "mmacs": best.macs / 1e6 if best else None,
                    "subnet_id": best.subnet_id if best else None,
                }
            )
    if row["mean_pareto_top1"] is not None and row["chance_top1"] is not None and row["total_dollars"] > 0:
        row["top1_gain_per_dollar"] = (row["mean_pareto_top1"] - row["chance_top1"]) / row["total_dollars"]
    return row


def compare(run_dirs_: Sequence[Path], bucket_count: int = DEFAULT_BUCKETS, title: str = "") -> Comparison:
    if bucket_count < 1:
        raise UserError(f"--buckets: {bucket_count}; needs at least 1")
    runs = [load_run(d) for d in run_dirs_]
    span = _common_range(runs)
    buckets = FlopBuckets(span[0], span[1], bucket_count) if span else None
    timed = [p.macs for r in runs for p in r.latency_points]
    latency_buckets = FlopBuckets(min(timed), max(timed), bucket_count) if timed else None
    comparison = Comparison(title or ", ".join(r.name for r in runs), runs, buckets, latency_buckets=latency_buckets)
    comparison.rows = [_row(r, buckets, latency_buckets) for r in runs]
    return comparison


def plots_dir_name(runs: Sequence[str], group: str | None) -> str:
    """Where a comparison's plots go under `<root>/_compare/`: the group, or the runs' names (hashed if long)."""
    name = group or "+".join(runs)
    if len(name) > 80:
        name = name[:60] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


# --- rendering -------------------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _at(top1: float | None, mmacs: float | None) -> str:
    return "–" if top1 is None else f"{top1:.2f} @ {mmacs:.3g}"


MAIN_COLUMNS = [
    ("run", lambda r: r["run"]),
    ("method", lambda r: r["method"] or "–"),
    ("state", lambda r: r["state"] or "–"),
    ("subnets", lambda r: str(r["subnets"])),
    ("smallest top-1 @ MMACs", lambda r: _at(r["smallest_top1"], r["smallest_mmacs"])),
    ("largest top-1 @ MMACs", lambda r: _at(r["largest_top1"], r["largest_mmacs"])),
    ("mean Pareto top-1", lambda r: _f(r["mean_pareto_top1"], ".2f")),
    ("epochs", lambda r: str(r["epochs"])),
    ("dev-min/epoch", lambda r: _f(r["device_minutes_per_epoch"], ".3g")),
    ("train dev-h", lambda r: _f(r["train_device_hours"], ".4g")),
    ("train $", lambda r: _f(r["train_dollars"], ".4g")),
    ("eval dev-h", lambda r: _f(r["eval_device_hours"], ".4g")),
    ("eval $", lambda r: _f(r["eval_dollars"], ".4g")),
    ("total $", lambda r: _f(r["total_dollars"], ".4g")),
    ("top-1 gain per $", lambda r: _f(r["top1_gain_per_dollar"], ".4g")),
]


def _markdown_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


RANGE_COLUMNS = [
    ("MMAC range", lambda r: "–" if r["range_mmacs"] is None else "{:.3g}-{:.3g}".format(*r["range_mmacs"])),
    ("mean Pareto top-1, common range", lambda r: _f(r["mean_pareto_top1_common_range"], ".2f")),
]


def render_markdown(comparison: Comparison, plots: Sequence[Path] = ()) -> str:
    columns = list(MAIN_COLUMNS)
    if comparison.buckets is not None and any(
        r["range_mmacs"] is not None and r["range_mmacs"] != list(comparison.range_mmacs) for r in comparison.rows
    ):
        at = [h for h, _ in columns].index("mean Pareto top-1")
        columns[at + 1 : at + 1] = RANGE_COLUMNS
    lines = [f"## Comparison: {comparison.title}", ""]
    lines += _markdown_table([h for h, _ in columns], [[f(r) for _, f in columns] for r in comparison.rows], 2)
    if comparison.buckets is not None:
        lo, hi = comparison.range_mmacs
        lines += ["", f"### Best subnet per FLOP bucket (top-1 % @ MMACs; range {lo:.4g}-{hi:.4g} MMACs)", ""]
        header = ["bucket", "MMACs"] + [r["run"] for r in comparison.rows]
        body = []
        for i in range(comparison.buckets.count):
            b_lo, b_hi = comparison.buckets.bounds(i)
            cells = []
            for r in comparison.rows:
                b = r["buckets"][i] if r["buckets"] else None
                cells.append(_at(b["top1"], b["mmacs"]) if b else "–")
            body.append([str(i + 1), f"{b_lo / 1e6:.4g}-{b_hi / 1e6:.4g}"] + cells)
        lines += _markdown_table(header, body, 2)
    if comparison.latency_buckets is not None:
        lines += ["", *_latency_section(comparison)]
    lines += [
        "",
        "Mean Pareto top-1: area under the Pareto front of top-1 against MACs normalised to [0, 1] over the run's "
        "supernet's range (trapezoids between front subnets, flat after the last, 0 below the first).",
        "Top-1 gain per $: (mean Pareto top-1 - chance) / total dollars (training + evaluation).",
    ]
    if plots:
        lines += ["", "### Plots", ""] + [f"![{p.stem}]({p})" for p in plots]
    return "\n".join(lines)


def _latency_section(comparison: Comparison) -> list[str]:
    buckets = comparison.latency_buckets
    assert buckets is not None
    devices = sorted({d for r in comparison.rows for d in r["latency_devices"]})
    lines = [
        f"### Best subnet per latency bucket (top-1 % @ ms at batch 1; range {buckets.lo:.3g}-{buckets.hi:.3g} ms, "
        f"timed on {'; '.join(devices)})",
        "",
    ]
    if len(devices) > 1:
        lines += ["The runs were timed on different devices: their latencies do not compare.", ""]
    header = ["bucket", "ms"] + [r["run"] for r in comparison.rows]
    body = []
    for i in range(buckets.count):
        b_lo, b_hi = buckets.bounds(i)
        cells = []
        for r in comparison.rows:
            b = r["latency_buckets"][i] if r["latency_buckets"] else None
            cells.append("–" if not b or b["top1"] is None else f"{b['top1']:.2f} @ {b['ms']:.3g}")
        body.append([str(i + 1), f"{b_lo:.3g}-{b_hi:.3g}"] + cells)
    return lines + _markdown_table(header, body, 2)


def flat_rows(comparison: Comparison) -> list[dict]:
    """One flat row per run: the bucket list spread into bucket<i>_top1 / _mmacs / _subnet_id columns."""
    count = comparison.buckets.count if comparison.buckets else 0
    out = []
    for r in comparison.rows:
        flat = {k: v for k, v in r.items() if k not in ("buckets", "latency_buckets", "latency_devices")}
        flat["latency_devices"] = "; ".join(r["latency_devices"])
        for i in range(count):
            b = r["buckets"][i] if r["buckets"] else {}
            for key in ("top1", "mmacs", "subnet_id"):
                flat[f"bucket{i + 1}_{key}"] = b.get(key)
        latency_count = comparison.latency_buckets.count if comparison.latency_buckets else 0
        for i in range(latency_count):
            b = r["latency_buckets"][i] if r["latency_buckets"] else {}
            for key in ("top1", "ms", "subnet_id"):
                flat[f"latency_bucket{i + 1}_{key}"] = b.get(key)
        out.append(flat)
    return out


def render(comparison: Comparison, fmt: str = "markdown", plots: Sequence[Path] = ()) -> str:
    if fmt == "markdown":
        return render_markdown(comparison, plots)
    if fmt == "csv":
        rows = flat_rows(comparison)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["run"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    if fmt == "json":
        document = {
            "comparison": comparison.title,
            "range_mmacs": list(comparison.range_mmacs) if comparison.range_mmacs else None,
            "bucket_edges_mmacs": [e / 1e6 for e in comparison.buckets.edges] if comparison.buckets else None,
            "latency_bucket_edges_ms": comparison.latency_buckets.edges if comparison.latency_buckets else None,
            "runs": comparison.rows,
            "plots": [str(p) for p in plots],
        }
        return json.dumps(document, indent=2, default=str)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
