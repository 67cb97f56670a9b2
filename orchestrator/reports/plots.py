"""The comparison's plots, as PNG files (matplotlib, Agg canvas; no display needed).

- pareto.png: every run's evaluated subnets and Pareto front (top-1 against MACs) on one chart, with the FLOP
  bucket edges; pareto_latency.png the same against batch-1 latency, where the subnets were timed.
- cost.png: dollars per epoch (a method's phases show as steps: DepS's one-network warmup is cheap) and
  cumulative dollars against epoch, evaluation added at the end.
- class_correlation.png: the full model's class-correlation heatmaps at the epochs recorded (DepS appendix A).
- gradients.png: per layer, the l2 norm of the full-model-only, shrinking and ε-shrinking gradients, and the
  latter two's cosine similarity with the first (DepS Fig. 3).

- sweep.png: for a sweep's trials, the last per-epoch top-1 and the dollars of each trial against each swept
  parameter (a cross marks a trial stopped early).

Each plot is skipped when no run has its data. Files are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from orchestrator.reports.compare import Comparison, RunResults
from orchestrator.reports.pareto import Point, pareto_front
from orchestrator.storage.dataset import read_run_table

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
GRADIENT_STYLES = {
    "no_shrink": ("G_noShrink (full model only)", "#2ca02c", "-"),
    "shrink": ("G_Shrink (subnets at weight 1)", "#d62728", "--"),
    "eps_shrink": ("G_Shrink(ε) (subnets at weight ε)", "#1f77b4", "-."),
}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the plots from everyone else
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _label(run: RunResults) -> str:
    return run.name if not run.method or run.method in run.name else f"{run.name} ({run.method})"


def plot_pareto(comparison: Comparison, path: Path, latency: bool = False) -> Path | None:
    """Top-1 against MACs (or, with `latency`, against batch-1 milliseconds) per run, with its Pareto front."""
    buckets = comparison.latency_buckets if latency else comparison.buckets
    scale = 1.0 if latency else 1e6

    def points_of(run: RunResults) -> list[Point]:
        return run.latency_points if latency else run.points

    if buckets is None or not any(points_of(r) for r in comparison.runs):
        return None
    fig = Figure(figsize=(9.5, 5.8))
    ax = fig.add_subplot()
    for i, (run, row) in enumerate(zip(comparison.runs, comparison.rows)):
        points = points_of(run)
        if not points:
            continue
        colour = COLOURS[i % len(COLOURS)]
        ax.scatter([p.macs / scale for p in points], [p.top1 for p in points], s=14, alpha=0.3, color=colour)
        front = pareto_front(points)
        xs = [p.macs / scale for p in front] + [buckets.hi / scale]
        ys = [p.top1 for p in front] + [front[-1].top1]
        label = f"{_label(run)}: {len(points)} subnets"
        if not latency:
            label = f"{_label(run)}: mean Pareto {row['mean_pareto_top1']:.2f} %, {len(points)} subnets"
        # the best top-1 a budget buys: straight between front subnets (what mean Pareto accuracy integrates)
        ax.plot(xs, ys, color=colour, linewidth=2, label=label)
        ax.plot(xs[:-1], ys[:-1], "o", color=colour, markersize=5)
    for k, edge in enumerate(buckets.edges):
        ax.axvline(edge / scale, color="grey", linestyle=":", linewidth=1)
        if k < buckets.count:
            lo, hi = buckets.bounds(k)
            ax.text((lo + hi) / 2 / scale, 1.01, f"bucket {k + 1}", transform=ax.get_xaxis_transform(), ha="center")
    if latency:
        devices = sorted({d for r in comparison.runs for d in r.latency_devices})
        ax.set_xlabel(f"latency at batch 1 (ms) on {'; '.join(devices)}")
    else:
        ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Pareto fronts: {comparison.title}", pad=22)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_costs(comparison: Comparison, path: Path) -> Path | None:
    tables = [
        (r, read_run_table(r.run_dir, "epochs", ["epoch", "phase", "dollars", "device_hours"]).to_pandas())
        for r in comparison.runs
    ]
    tables = [(r, t.sort_values("epoch")) for r, t in tables if len(t)]
    if not tables:
        return None
    fig = Figure(figsize=(12, 4.8))
    per_epoch, cumulative = fig.subplots(1, 2)
    for i, (run, t) in enumerate(tables):
        colour = COLOURS[i % len(COLOURS)]
        epochs = t["epoch"].to_numpy()
        per_epoch.step(epochs, t["dollars"], where="mid", color=colour, linewidth=2, label=_label(run))
        per_epoch.plot(epochs, t["dollars"], ".", color=colour)
        for j in range(len(t)):
            if j == 0 or t["phase"].iloc[j] != t["phase"].iloc[j - 1]:
                per_epoch.annotate(
                    t["phase"].iloc[j],
                    (epochs[j], t["dollars"].iloc[j]),
                    textcoords="offset points",
                    xytext=(2, 6 + 11 * i),  # runs' labels stacked, not on top of each other
                    fontsize=8,
                    color=colour,
                )
        # x: epochs completed, from (0, $0); the evaluation stage is the last half step.
        done = np.concatenate([[0], epochs + 1])
        total = np.concatenate([[0.0], t["dollars"].cumsum().to_numpy()])
        evaluation = run.costs.get("eval_dollars") or 0.0
        label = rf"{_label(run)}: \${total[-1] + evaluation:.3g}"  # \$: not mathtext
        if evaluation > 0:
            label += rf" (evaluation \${evaluation:.2g})"  # in the legend: end labels of close runs would overlap
        cumulative.plot(done, total, "-", color=colour, linewidth=2, label=label)
        if evaluation > 0:
            end = done[-1] + 0.5
            cumulative.plot([done[-1], end], [total[-1], total[-1] + evaluation], ":", color=colour, linewidth=2)
            cumulative.plot([end], [total[-1] + evaluation], "s", color=colour)
    device = next((r.costs.get("device_type") for r, _ in tables if r.costs.get("device_type")), "device")
    per_epoch.set_title(f"Cost per epoch ({device})")
    per_epoch.set_xlabel("epoch")
    per_epoch.set_ylabel("dollars per epoch")
    per_epoch.set_ylim(0, 1.25 * max(t["dollars"].max() for _, t in tables))  # room for the phase labels
    cumulative.set_title("Cumulative dollars (evaluation: dotted, at the end)")
    cumulative.set_xlabel("epochs completed")
    cumulative.set_ylabel("dollars")
    cumulative.set_ylim(0, 1.5 * cumulative.get_ylim()[1])  # room for the legend above the lines' ends
    for ax in (per_epoch, cumulative):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_class_correlation(
    comparison: Comparison, path: Path, epochs: Sequence[int] | None = None, max_columns: int = 4
) -> Path | None:
    """One row per run, one heatmap per recorded epoch (the last `max_columns` of those asked for)."""
    rows = []
    for run in comparison.runs:
        t = read_run_table(run.run_dir, "class_correlation").to_pandas()
        if not len(t):
            continue
        recorded = sorted(t["epoch"].unique())
        panels = []
        for epoch in [e for e in recorded if epochs is None or e in epochs][-max_columns:]:
            e = t[t["epoch"] == epoch]
            n = int(max(e["predicted_class"].max(), e["other_class"].max())) + 1
            matrix = np.full((n, n), np.nan)
            matrix[e["predicted_class"].to_numpy(), e["other_class"].to_numpy()] = e["cosine"].astype(float).to_numpy()
            panels.append((run, int(epoch), e["phase"].iloc[0], int(e["images"].iloc[0]), matrix))
        if panels:
            rows.append(panels)
    if not rows:
        return None
    columns = max(len(panels) for panels in rows)
    fig = Figure(figsize=(4.2 * columns + 1.2, 4.0 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    image = None
    for row_axes, panels in zip(axes, rows):
        for ax in row_axes[len(panels) :]:
            ax.set_visible(False)
        for ax, (run, epoch, phase, images, matrix) in zip(row_axes, panels):
            image = ax.imshow(np.ma.masked_invalid(matrix), vmin=-1, vmax=1, cmap="viridis")
            ax.set_title(f"{run.name}\nepoch {epoch} ({phase}), {images} images", fontsize=9)
            ax.set_xlabel("class j")
            ax.set_ylabel("predicted class i")
            if len(matrix) <= 12:
                for i in range(len(matrix)):
                    for j in range(len(matrix)):
                        if not np.isnan(matrix[i, j]):
                            value = matrix[i, j]
                            colour = "black" if value > 0.3 else "white"
                            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity of mean logits")
    fig.suptitle("Full model class correlation: A_ij = cos(mean logits of predictions i, of predictions j)")
    return _save(fig, path)


def plot_gradients(comparison: Comparison, path: Path) -> Path | None:
    panels = []
    for run in comparison.runs:
        t = read_run_table(run.run_dir, "gradients").to_pandas()
        for epoch in sorted(t["epoch"].unique()):
            panels.append((run, t[t["epoch"] == epoch].sort_values("layer_index")))
    if not panels:
        return None
    fig = Figure(figsize=(13, 4.2 * len(panels) + 0.4))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (norms, cosines), (run, t) in zip(axes, panels):
        first = t.iloc[0]
        eps = t[t["gradient"] == "eps_shrink"]["student_weight"].iloc[0]
        for kind, (label, colour, style) in GRADIENT_STYLES.items():
            g = t[t["gradient"] == kind]
            norms.plot(g["layer_index"], g["l2_norm"], style, color=colour, label=label, linewidth=1.5)
            if kind != "no_shrink":
                cosines.plot(g["layer_index"], g["cosine_to_no_shrink"].astype(float), style, color=colour, label=label)
        where = f"{run.name}: end of epoch {first['epoch']} ({first['phase']}), next {first['probe_phase']}"
        norms.set_yscale("log")
        norms.set_title(f"{where}\nper-layer gradient l2 norm (ε = {eps:.3g})", fontsize=9)
        norms.set_xlabel("layer (conv / linear weights, input to output)")
        norms.set_ylabel("l2 norm")
        cosines.set_title(f"{where}\ncosine similarity with G_noShrink", fontsize=9)
        cosines.set_xlabel("layer (conv / linear weights, input to output)")
        cosines.set_ylabel("cosine similarity")
        lowest = t[t["gradient"] != "no_shrink"]["cosine_to_no_shrink"].astype(float).min()
        cosines.set_ylim(min(-0.05, lowest - 0.05) if lowest == lowest else -0.05, 1.05)  # NaN-safe
        for ax in (norms, cosines):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sweep(comparison: Comparison, path: Path) -> Path | None:
    """Per swept parameter: each trial's last per-epoch top-1 and its dollars against the parameter's value."""
    trials = [(r, row) for r, row in zip(comparison.runs, comparison.rows) if r.trial_values]
    if not trials:
        return None
    parameters = sorted({p for r, _ in trials for p in r.trial_values})
    fig = Figure(figsize=(5.2 * len(parameters), 4.4))
    for k, parameter in enumerate(parameters):
        ax = fig.add_subplot(1, len(parameters), k + 1)
        dollars_ax = ax.twinx()
        points = sorted(
            ((r.trial_values[parameter], r, row) for r, row in trials if parameter in r.trial_values),
            key=lambda t: (str(type(t[0])), t[0]),
        )
        xs = [x if isinstance(x, (int, float)) else str(x) for x, _, _ in points]
        top1 = [(r.final_metrics or {}).get("val_top1") for _, r, _ in points]
        smallest = [(r.final_metrics or {}).get("val_top1_smallest") for _, r, _ in points]
        dollars = [row["total_dollars"] for _, _, row in points]
        stopped = [row["state"] == "STOPPED_EARLY" for _, _, row in points]
        for i, (x, early) in enumerate(zip(xs, stopped)):
            for values, colour, label in ((top1, COLOURS[0], "largest"), (smallest, COLOURS[2], "smallest")):
                if values[i] is not None:
                    marker = "x" if early else "o"
                    ax.scatter([x], [values[i]], color=colour, marker=marker, s=40, label=label if i == 0 else None)
        dollars_ax.bar(
            range(len(xs)) if not all(isinstance(x, (int, float)) for x in xs) else xs,
            dollars,
            width=_bar_width(xs),
            color=COLOURS[1],
            alpha=0.25,
        )
        ax.set_zorder(dollars_ax.get_zorder() + 1)  # the points over the bars
        ax.patch.set_visible(False)
        ax.legend(loc="lower left", fontsize=8, title="subnet")
        ax.set_xlabel(parameter)
        ax.set_ylabel("val top-1 at the last epoch (%); x: stopped early")
        dollars_ax.set_ylabel("dollars (training + evaluation)", color=COLOURS[1])
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sweep: {comparison.title}")
    return _save(fig, path)


def _bar_width(xs: list) -> float:
    numbers = sorted({x for x in xs if isinstance(x, (int, float))})
    if len(numbers) < 2 or len(numbers) != len(xs):
        return 0.6
    return 0.6 * min(b - a for a, b in zip(numbers, numbers[1:]))


def write_plots(comparison: Comparison, out_dir: Path, heatmap_epochs: Sequence[int] | None = None) -> list[Path]:
    """Every plot there is data for, into `out_dir`; returns the files written."""
    written = [
        plot_pareto(comparison, out_dir / "pareto.png"),
        plot_pareto(comparison, out_dir / "pareto_latency.png", latency=True),
        plot_costs(comparison, out_dir / "cost.png"),
        plot_class_correlation(comparison, out_dir / "class_correlation.png", heatmap_epochs),
        plot_gradients(comparison, out_dir / "gradients.png"),
        plot_sweep(comparison, out_dir / "sweep.png"),
    ]
    return [p for p in written if p is not None]
