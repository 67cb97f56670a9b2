"""A `methods:` comparison run at once (Ray Tune trials) against the same comparison one run after another.

Submits the spec twice into fresh storage roots on the embedded local cluster:
once with `max_concurrent: 1` (one after another) and once as the cluster fits
(`max_concurrent` unset), in alternating order over the repeats, and reads
`deps-orch cost-report --format json` of each. Prints, per mode, the submit's wall
time, each run's held device-hours and its epochs' device-minutes, and the ratio
of the wall times (above 1: at once is faster). With one worker a run on 2 CPUs,
two runs fit at a time.

    .venv/bin/python benchmarks/comparison_concurrency.py [--spec jobspecs/quickstart-compare.yaml]
        [--set cluster.num_workers=1 ...] [--repeats 1] [--json out.json]
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
DEFAULT_SETS = ["cluster.num_workers=1", "dataset.batch_size=64"]  # the global batch of the 2-worker spec


def submit(spec: Path, root: Path, sets: list[str]) -> tuple[float, str, list[dict]]:
    """Submit `spec` with its runs under `root`; (wall seconds, stdout, cost-report rows)."""
    overrides = [arg for value in [*sets, f"storage.root={root}"] for arg in ("--set", value)]
    started = time.perf_counter()
    done = subprocess.run([*CLI, "submit", str(spec), *overrides], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"submit {spec} failed ({done.returncode}): {done.stderr[-2000:]}")
    report = subprocess.run(
        [*CLI, "cost-report", "--root", str(root), "--format", "json"], cwd=ROOT, capture_output=True, check=True
    )
    return wall, done.stdout, json.loads(report.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "jobspecs" / "quickstart-compare.yaml")
    parser.add_argument("--set", dest="sets", action="append", help=f"spec overrides (default: {DEFAULT_SETS})")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sets = args.sets or DEFAULT_SETS
    modes = {"one after another": ["max_concurrent=1"], "at once": []}
    results: list[dict] = []
    for repeat in range(args.repeats):
        order = list(modes) if repeat % 2 == 0 else list(reversed(modes))
        for mode in order:
            with tempfile.TemporaryDirectory(prefix="deps-orch-concurrency-") as root:
                wall, stdout, rows = submit(args.spec, Path(root), [*sets, *modes[mode]])
            at_once = next((line for line in stdout.splitlines() if "at a time, on Ray Tune" in line), "")
            results.append({"repeat": repeat, "mode": mode, "wall_seconds": wall, "tune": at_once, "runs": rows})
            held = sum(r["held_device_hours"] or 0.0 for r in rows)
            print(f"repeat {repeat} {mode}: {wall:.1f} s wall, {held:.4f} held dev-h {at_once}", flush=True)
            for r in rows:
                print(
                    f"    {r['run']}: held {r['held_device_hours']:.4f} dev-h, useful {r['useful_device_hours']:.4f}, "
                    f"{r['device_minutes_per_epoch']:.3f} dev-min/epoch, {r['total_dollars']:.4f} $"
                )
    for repeat in range(args.repeats):
        walls = {r["mode"]: r["wall_seconds"] for r in results if r["repeat"] == repeat}
        print(f"repeat {repeat}: one after another / at once = {walls['one after another'] / walls['at once']:.2f}")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
