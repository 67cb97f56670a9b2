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
    submit.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")

    report = commands.add_parser("cost-report", help="cost and accuracy per run (the DepS paper's Table 2)")
    report.add_argument("runs", nargs="+", help="run names (under --root) or run directories")
    report.add_argument("--root", type=Path, default=Path("runs"), help="storage root (default: ./runs)")
    report.add_argument("--format", choices=FORMATS, default="table")
    return parser


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.plan import make_plan
    from orchestrator.spec_file import load_spec

    spec = load_spec(args.spec, args.overrides)
    plan = make_plan(spec)
    if args.dry_run:
        print(yaml.safe_dump(plan.describe(), sort_keys=False).rstrip())
        return 0
    from orchestrator.controller import RunFailed, execute
    from orchestrator.reports.cost_report import COLUMNS, run_costs

    started = time.time()
    try:
        outcome = execute(plan)
    except RunFailed as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"deps-orch: interrupted; submit {args.spec} again to resume {spec.run} from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    print(
        f"[{spec.run}] {outcome.state.value} in {time.time() - started:.1f}s; "
        f"{outcome.subnets_written} subnets evaluated; results in {plan.run_dir}"
    )
    print(render(COLUMNS, [run_costs(plan.run_dir)]))
    return 0


def _cost_report(args: argparse.Namespace) -> int:
    from orchestrator.reports.cost_report import COLUMNS, cost_report

    print(render(COLUMNS, cost_report(args.runs, args.root), args.format))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (scancel, kill) stops a run like Ctrl-C: cleanly, resumable


def main(argv: list[str] | None = None) -> int:
    prepare_ray_environment()  # before anything imports ray
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    handlers = {"submit": _submit, "cost-report": _cost_report}
    try:
        return handlers[args.command](args)
    except UserError as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
