"""The `deps-orch` command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import yaml

from orchestrator.errors import UserError
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

    report = commands.add_parser("cost-report", help="cost and accuracy per run (the DepS paper's Table 2)")
    report.add_argument(
        "runs", nargs="+", help="run names (under --root), run directories, or comparison names (all their runs)"
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
    status.add_argument("run", nargs="?", help="one run (name under --root, or its directory), in detail")
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

    dashboard = commands.add_parser("dashboard", help="where a run's Ray dashboard is and how to sign in")
    dashboard.add_argument("run", nargs="?", help="run name or directory (default: the latest running run)")
    dashboard.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    return parser


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.plan import make_plan
    from orchestrator.spec_file import load_spec

    spec = load_spec(args.spec, args.overrides)
    plans = [make_plan(run_spec) for run_spec in spec.runs()]
    if args.dry_run:
        described = plans[0].describe() if spec.methods is None else _comparison(plans)
        if not args.no_forecast and spec.forecast.measure:
            from orchestrator.profile_job import dry_run_forecasts

            forecasts = dry_run_forecasts(plans)
            for run, forecast in zip([described] if spec.methods is None else described["runs"], forecasts):
                run["forecast"] = forecast
        print(yaml.safe_dump(described, sort_keys=False).rstrip())
        return 0
    from orchestrator.backends.launch import launch, runs_elsewhere

    if runs_elsewhere(spec) and not getattr(args, "inside_cluster", False):
        return launch(spec, plans, args.spec, args.detach)  # to Slurm or a Ray cluster, and follow it there
    if spec.methods is not None:
        return _submit_comparison(args, plans)
    (plan,) = plans
    from orchestrator.controller import RunFailed, execute
    from orchestrator.reports.cost_report import COLUMNS, run_costs

    started = time.time()
    try:
        outcome = execute(plan)
    except RunFailed as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        how = "cancelled" if _state_of(plan.run_dir) == "CANCELLED" else "interrupted"
        print(
            f"deps-orch: {how}; submit {args.spec} again to resume {spec.run} from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    if outcome.state.value != "SUCCEEDED":
        print(
            f"[{spec.run}] {outcome.state.value} in {time.time() - started:.1f}s: {outcome.reason}; "
            f"submit {args.spec} again (with a larger budget) to resume from its last checkpoint"
        )
        print(render(COLUMNS, [run_costs(plan.run_dir)]))
        return STOPPED_EXIT.get(outcome.state.value, 1)
    print(
        f"[{spec.run}] {outcome.state.value} in {time.time() - started:.1f}s; "
        f"{outcome.subnets_written} subnets evaluated; results in {plan.run_dir}"
    )
    print(render(COLUMNS, [run_costs(plan.run_dir)]))
    return 0


STOPPED_EXIT = {"BUDGET_EXHAUSTED": 3, "CANCELLED": 130}


def _state_of(run_dir: Path) -> str | None:
    from orchestrator.state import read_state

    record = read_state(run_dir / "state.json")
    return record.state.value if record is not None else None


def _comparison(plans: list) -> dict:
    return {"comparison": plans[0].spec.group, "runs": [plan.describe() for plan in plans]}


def _submit_comparison(args: argparse.Namespace, plans: list) -> int:
    """One run per method, one after another on one cluster, then their costs side by side."""
    from orchestrator.controller import RunFailed, execute_comparison
    from orchestrator.reports.cost_report import COLUMNS, run_costs

    group = plans[0].spec.group
    print(f"[{group}] comparing {', '.join(p.spec.run for p in plans)}")
    started = time.time()
    try:
        outcomes = execute_comparison(plans)
    except RunFailed as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"deps-orch: interrupted; submit {args.spec} again to resume {group}: finished runs are kept, "
            "the interrupted one resumes from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    failed = [o for o in outcomes if isinstance(o, RunFailed)]
    print(
        f"[{group}] {len(outcomes) - len(failed)} of {len(outcomes)} runs succeeded in {time.time() - started:.1f}s; "
        f"results in {plans[0].run_dir.parent}"
    )
    print(render(COLUMNS, [run_costs(p.run_dir) for p in plans if p.run_dir.exists()]))
    for failure in failed:
        print(f"deps-orch: error: {failure}", file=sys.stderr)
    return 1 if failed else 0


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
    from orchestrator.status import find_run_dir
    from orchestrator.stopping import cancel_run

    return cancel_run(find_run_dir(args.run, args.root), args.after_epoch, args.wait)


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
    }
    try:
        return handlers[args.command](args)
    except UserError as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
