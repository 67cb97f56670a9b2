"""The `deps-orch` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.export import FORMATS as EXPORT_FORMATS
from orchestrator.ray_env import prepare_ray_environment
from orchestrator.reports.table import FORMATS, render


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deps-orch", description="Once-for-all supernet training on Ray, priced per epoch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    submit = commands.add_parser("submit", help="validate a job spec, plan it and run it")
    submit.add_argument("spec", help="job spec YAML file")
    submit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="a.b=value",
        help="override a spec field (repeatable)",
    )
    submit.add_argument(
        "--dry-run", action="store_true", help="print the resolved plan and its cost forecast, then exit"
    )
    submit.add_argument(
        "--no-forecast", action="store_true", help="with --dry-run: the plan only, without measuring the forecast"
    )
    submit.add_argument(
        "--detach", action="store_true", help="slurm and ray backends: return once the job is submitted"
    )
    submit.add_argument(
        "--verbose", action="store_true", help="show library warnings and Ray's log lines too (always in run.log)"
    )

    report = commands.add_parser("cost-report", help="cost and accuracy per run (the DepS paper's Table 2)")
    report.add_argument(
        "runs",
        nargs="*",
        help="run names (under --root), run directories, or comparison names (all their runs); default: every run",
    )
    report.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    report.add_argument("--format", choices=FORMATS, default="table")

    compare = commands.add_parser("compare", help="methods side by side: accuracy across the FLOP range, cost, plots")
    compare.add_argument("runs", nargs="*", metavar="RUN", help="run names (under --root) or run directories")
    compare.add_argument("--group", help="every run of this comparison (a multi-method spec's run name)")
    compare.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    compare.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    compare.add_argument("--buckets", type=int, default=6, help="FLOP buckets over the MAC range (default: 6)")
    compare.add_argument("--plots", type=Path, help="directory for the PNG plots (default: <root>/_compare/<name>)")
    compare.add_argument("--no-plots", action="store_true", help="print the table only")
    compare.add_argument("--heatmap-epochs", type=int, nargs="+", help="epochs of the class-correlation heatmaps")

    status = commands.add_parser("status", help="every run's state, progress, time, spend and forecast")
    status.add_argument(
        "run", nargs="?", help="one run (name under --root, or its directory) in detail, or a comparison's runs"
    )
    status.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    status.add_argument("--format", choices=FORMATS, default="table")

    logs = commands.add_parser("logs", help="a run's log: states, forecast, progress, every epoch's figures")
    logs.add_argument("run", help="run name (under --root) or run directory")
    logs.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run stops")
    logs.add_argument("-n", "--lines", type=int, help="only the last N lines")

    cancel = commands.add_parser("cancel", help="stop a run, keeping its last checkpoint (submit again to resume)")
    cancel.add_argument("run", help="run name (under --root) or run directory")
    cancel.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    cancel.add_argument(
        "--after-epoch", action="store_true", help="let the epoch in flight finish and checkpoint, then stop"
    )
    cancel.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the run to stop (default: 120)")

    export = commands.add_parser(
        "export", help="write an evaluated subnet as a deployable file (TorchScript, ONNX, state dict) with a sidecar"
    )
    export.add_argument("run", help="run name (under --root) or run directory")
    export.add_argument("subnet", nargs="?", metavar="SUBNET_ID", help="the subnet's id (or a unique prefix of it)")
    export.add_argument(
        "--best",
        action="store_true",
        help="the most accurate subnet under the run's evaluation.constraint and the limits below",
    )
    export.add_argument("--max-macs", type=float, metavar="N", help="with --best: at most N MACs per image")
    export.add_argument("--max-latency-ms", type=float, metavar="T", help="with --best: at most T ms at batch 1")
    export.add_argument("--format", choices=tuple(EXPORT_FORMATS), default="torchscript")
    export.add_argument("-o", "--output", type=Path, help="the file (default: <run_dir>/exports/<subnet_id>.<ext>)")
    export.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")

    dashboard = commands.add_parser("dashboard", help="where a run's Ray dashboard is and how to sign in")
    dashboard.add_argument("run", nargs="?", help="run name or directory (default: the latest running run)")
    dashboard.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    return parser


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.spec_file import load_spec

    spec = load_spec(args.spec, args.overrides)  # a spec at fault is refused before Ray and the backends load
    from orchestrator.submission import submit

    return submit(
        spec,
        args.spec,
        dry_run=args.dry_run,
        no_forecast=args.no_forecast,
        detach=args.detach,
        verbose=args.verbose,
    )


def _cost_report(args: argparse.Namespace) -> int:
    from orchestrator.reports.cost_report import COLUMNS, cost_report

    print(render(COLUMNS, cost_report(args.runs, args.root), args.format))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from orchestrator.reports.compare import compare, plots_dir_name, render, resolve_runs

    comparison = compare(resolve_runs(args.runs, args.group, args.root), args.buckets, args.group or "")
    plots = []
    if not args.no_plots:
        from orchestrator.reports.plots import write_plots

        out = args.plots or args.root / "_compare" / plots_dir_name([r.name for r in comparison.runs], args.group)
        plots = write_plots(comparison, out, args.heatmap_epochs)
        if args.format != "markdown":
            print(f"plots: {', '.join(str(p) for p in plots) or 'none (no data)'}", file=sys.stderr)
    print(render(comparison, args.format, plots))
    return 0


def _status(args: argparse.Namespace) -> int:
    from orchestrator.status import status_report

    print(status_report(args.run, args.root, args.format))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from orchestrator.status import find_run_dir, show_log

    return show_log(find_run_dir(args.run, args.root), args.follow, args.lines)


def _cancel(args: argparse.Namespace) -> int:
    from orchestrator.backends import backend_class
    from orchestrator.storage.discovery import find_run_dir
    from workers.rundir.layout import RunDir
    from workers.rundir.plan_record import PlanRecord

    files = RunDir(find_run_dir(args.run, args.root))
    plan = PlanRecord.read(files)
    backend = backend_class(plan.backend if plan is not None else "local")
    return backend.cancel(files, args.after_epoch, args.wait, print)


def _export(args: argparse.Namespace) -> int:
    from orchestrator.export import ExportRequest, export_subnet

    request = ExportRequest(
        args.run, args.root, args.subnet, args.best, args.max_macs, args.max_latency_ms, args.format, args.output
    )
    done = export_subnet(request)
    row = done.row
    latency = f", {row['latency_ms']:.3g} ms on {row['latency_device']}" if row["latency_ms"] is not None else ""
    print(
        f"{done.path}: subnet {row['subnet_id']} of {request.run}, top-1 {row['top1']:.2f}%, "
        f"{done.macs / 1e6:.3g} MMACs, {done.params / 1e6:.3g} M params{latency} (sidecar {done.sidecar.name})"
    )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from orchestrator.dashboard import dashboard_text

    print(dashboard_text(args.run, args.root))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (scancel, kill) stops a run like Ctrl-C: cleanly, resumable


def main(argv: list[str] | None = None) -> int:
    prepare_ray_environment()  # before anything imports ray
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    handlers = {
        "submit": _submit,
        "cost-report": _cost_report,
        "compare": _compare,
        "status": _status,
        "logs": _logs,
        "cancel": _cancel,
        "dashboard": _dashboard,
        "export": _export,
    }
    try:
        return handlers[args.command](args)
    except UserError as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went (`deps-orch cost-report | head -3`): nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        return 0


if __name__ == "__main__":
    sys.exit(main())
