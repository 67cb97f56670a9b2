"""The forecast against the bill: fresh submissions of a spec, each forecast set beside its run's held time.

Each repeat submits the spec into a fresh storage root (`deps-orch submit`, the
embedded local cluster, the forecast measured in the run's training job), then
reads `deps-orch cost-report --format json`: per run, the forecast's device-hours
and the held device-hours (`holds.parquet`: what `sacct` or an invoice shows),
their error, and the ledger's split of the held time into useful, overhead and
lost. For a `methods:` spec every method is a row. The spread of the repeats'
forecasts of one run says how well two forecasts of the same spec agree.

    .venv/bin/python benchmarks/forecast_error.py [--spec jobspecs/quickstart.yaml] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.cli"]


def submit(spec: Path, root: Path) -> tuple[float, list[dict]]:
    """Submit `spec` with its runs under `root`; (wall seconds, cost-report rows)."""
    started = time.perf_counter()
    done = subprocess.run([*CLI, "submit", str(spec), "--set", f"storage.root={root}"], cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"submit {spec} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    report = subprocess.run(
        [*CLI, "cost-report", "--root", str(root), "--format", "json"], cwd=ROOT, capture_output=True, check=True
    )
    return wall, json.loads(report.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "jobspecs" / "quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="deps-orch-forecast-error-") as root:
            wall, report = submit(args.spec.resolve(), Path(root))
        for row in report:
            held, forecast = row["held_device_hours"], row["forecast_device_hours"]
            rows.append(
                {
                    "repeat": repeat,
                    "run": row["run"],
                    "submit_seconds": round(wall, 1),
                    "forecast_device_hours": forecast,
                    "held_device_hours": held,
                    "error_pct": 100.0 * (held / forecast - 1.0),
                    "useful_device_hours": row["useful_device_hours"],
                    "overhead_device_hours": row["overhead_device_hours"],
                    "lost_device_hours": row["lost_device_hours"],
                }
            )
            print(
                f"repeat {repeat} {row['run']}: forecast {forecast:.4f} dev-h, held {held:.4f} "
                f"({rows[-1]['error_pct']:+.1f} %); submit {wall:.0f}s",
                flush=True,
            )
    for run in dict.fromkeys(r["run"] for r in rows):
        forecasts = [r["forecast_device_hours"] for r in rows if r["run"] == run]
        spread = 100.0 * (max(forecasts) / min(forecasts) - 1.0)
        worst = max(abs(r["error_pct"]) for r in rows if r["run"] == run)
        print(f"{run}: worst error {worst:.1f} %; forecasts within {spread:.1f} % of each other")
    if args.json:
        machine = {"platform": platform.platform(), "python": platform.python_version()}
        args.json.write_text(json.dumps({"machine": machine, "spec": str(args.spec), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
