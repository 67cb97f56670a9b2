"""The driver of a run that `deps-orch submit` sent to a cluster: it runs the stages there.

Started by the Slurm job on the allocation's first node, or as the entry point
of a Ray job. It does what `deps-orch submit` does on a laptop (the same
`orchestrator.submission.submit`), except that its cluster runs already: the
backend attaches to it (RAY_ADDRESS, or `auto`). Exit codes are the CLI's:
0 done, 1 failed, 2 a user error, 3 stopped by its budget, 130 interrupted.

    python -m orchestrator.driver SPEC.json
    python -m orchestrator.driver --json '{"run": ...}'
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.ray_env import prepare_ray_environment


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    prepare_ray_environment()  # before anything imports ray
    signal.signal(signal.SIGTERM, _interrupt)
    # Slurm's time-limit warning reaches every process of the job step: the head handles it (it tells the
    # training through the run's notice file); by default it would kill this process.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m orchestrator.driver")
    parser.add_argument("spec", nargs="?", help="the spec as JSON (absolute paths), as the submitting side saved it")
    parser.add_argument("--json", help="the spec itself, as JSON")
    args = parser.parse_args(argv)
    if (args.spec is None) == (args.json is None):
        parser.error("give a spec file or --json")
    spec_path = Path(args.spec) if args.spec else None
    if spec_path is None:
        handle = tempfile.NamedTemporaryFile("w", prefix="deps-spec-", suffix=".json", delete=False)
        with handle:
            handle.write(args.json)
        spec_path = Path(handle.name)
    from orchestrator.spec_file import load_spec
    from orchestrator.submission import submit

    try:
        return submit(load_spec(spec_path), spec_path, here=True)
    except UserError as error:
        print(f"deps-orch: error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.json is not None:
            spec_path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
