"""Memory of the evaluation stage against the size of the test set: the driver, each actor, the object store.

Builds a synthetic ImageFolder (10 classes; 50,000 validation JPEGs and 2,000
training JPEGs for BN calibration, `--image-size` pixels, read at `--resolution`)
and runs the real evaluation stage (`orchestrator.evaluation_job.run_evaluation`:
a plan, 2 sharded actors, a freshly initialised supernet's checkpoint) on 4
subnets at 5,000 and at 50,000 test images. Each size runs in a fresh process
with its own local Ray cluster, so a peak is that size's alone. A sampler thread
reads the kernel's peak RSS (VmHWM) of the driver and of each evaluation actor (its
process title is `ray::_ShardActor...`) and, every 0.1 s, the object store's used
bytes.

    .venv/bin/python benchmarks/eval_memory.py [--json eval_memory.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (5_000, 50_000)
SUBNETS = 4
WORKERS = 2
CLASSES = 10


def _write_class(args: tuple[Path, str, int, int, int, int]) -> None:
    from PIL import Image

    root, split, label, count, size, seed = args
    rng = np.random.default_rng(seed)
    folder = root / split / f"n{label:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    base = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(count):
        tint = np.array([label * 25, 255 - label * 25, (label * 70) % 255], dtype=np.float32)
        pixels = np.add.outer(base, base)[..., None] * 0.3 + tint * 0.7 + rng.normal(0, 20, (size, size, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.JPEG", quality=85)


def write_folder(root: Path, val: int, train: int, size: int) -> Path:
    jobs = [(root, "val", c, val // CLASSES, size, c) for c in range(CLASSES)]
    jobs += [(root, "train", c, train // CLASSES, size, 100 + c) for c in range(CLASSES)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_class, jobs)
    return root


def peak_rss(pid: int | str = "self") -> int:
    """The process's peak resident set (the kernel's high-water mark, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Peak RSS of this process and of every evaluation actor (their kernel high-water marks, so no peak between
    two samples is missed), and the object store's peak use, sampled every 0.1 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.actors: dict[int, int] = {}
        self.store = 0
        self.done = threading.Event()

    def _actor_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if b"_ShardActor" in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def run(self) -> None:
        import ray

        total = ray.cluster_resources().get("object_store_memory", 0)
        while not self.done.is_set():
            for pid in self._actor_pids():
                try:
                    self.actors[pid] = max(self.actors.get(pid, 0), peak_rss(pid))
                except OSError:
                    pass
            self.store = max(self.store, int(total - ray.available_resources().get("object_store_memory", total)))
            time.sleep(0.1)


def one_size(data: Path, storage: Path, images: int, resolution: int) -> dict:
    from orchestrator.ray_env import prepare_ray_environment

    prepare_ray_environment()
    import ray
    import torch

    from orchestrator.evaluation_job import run_evaluation
    from orchestrator.plan import make_plan
    from orchestrator.spec_file import validate_spec
    from workers.supernet.space_spec import build_space
    from workers.supernet.supernet import build_supernet

    spec = validate_spec(
        {
            "run": f"memory-{images}",
            "dataset": {"name": "imagefolder", "root": str(data), "resolution": resolution, "test_subset": images},
            "space": {"width_mult": 0.35, "cifar_variant": True},
            "method": {"name": "deps", "epochs": 1},
            "cluster": {"num_workers": 1},
            "evaluation": {
                "selection": {"name": "random", "subnets": SUBNETS - 2},
                "calibration_images": 2000,
                "calibration_batch_size": 200,
                "test_batch_size": 500,
                "workers": WORKERS,
                "diagnostics": {"enabled": False},
            },
            "storage": {"root": str(storage)},
        },
        "eval-memory",
    )
    plan = make_plan(spec)
    torch.manual_seed(0)
    storage.mkdir(parents=True, exist_ok=True)
    checkpoint = storage / f"state-{images}.pt"
    torch.save({"model": build_supernet(spec, build_space(spec), CLASSES).state_dict(), "epoch": 0}, checkpoint)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    sampler = Sampler()
    before = peak_rss()
    sampler.start()
    started = time.perf_counter()
    try:
        written = run_evaluation(plan, checkpoint)
    finally:
        seconds = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        ray.shutdown()
    held = images // WORKERS * 3 * resolution * resolution
    return {
        "test_images": images,
        "subnets": written,
        "seconds": seconds,
        "subnets_per_minute": 60.0 * written / seconds,
        "driver_rss_before_mb": before / 2**20,
        "driver_peak_rss_mb": peak_rss() / 2**20,
        "actor_peak_rss_mb": sorted(v / 2**20 for v in sampler.actors.values()),
        "object_store_peak_mb": sampler.store / 2**20,
        "uint8_test_shard_mb": held / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=40, help="pixels of the stored JPEG files")
    parser.add_argument("--resolution", type=int, default=32, help="pixels the evaluation reads them at")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, in this process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--storage", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.data, args.storage, args.one, args.resolution)))
        return

    work = Path(tempfile.mkdtemp(prefix="eval-memory-"))
    started = time.perf_counter()
    data = write_folder(work / "data", max(SIZES), 2000, args.image_size)
    written = time.perf_counter() - started
    print(f"wrote {max(SIZES)} + 2000 JPEGs ({args.image_size} px) in {written:.0f} s", file=sys.stderr)
    results = []
    for images in SIZES:
        command = [sys.executable, __file__, "--one", str(images), "--data", str(data)]
        command += ["--storage", str(work / "runs"), "--resolution", str(args.resolution)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)

    small, large = results
    print(f"{SUBNETS} subnets, {WORKERS} actors, {args.image_size} px JPEGs read at {args.resolution} px;")
    print(f"{os.cpu_count()} CPUs, {platform.platform()}\n")
    print(
        "| test images | driver peak RSS (MB) | actor peak RSS (MB) | uint8 shard per actor (MB) "
        "| object store peak (MB) | subnets / minute |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        actors = ", ".join(f"{v:.0f}" for v in r["actor_peak_rss_mb"])
        print(
            f"| {r['test_images']:,} | {r['driver_peak_rss_mb']:.0f} | {actors} | {r['uint8_test_shard_mb']:.1f} "
            f"| {r['object_store_peak_mb']:.1f} | {r['subnets_per_minute']:.1f} |"
        )
    driver_growth = large["driver_peak_rss_mb"] - small["driver_peak_rss_mb"]
    actor_growth = max(large["actor_peak_rss_mb"]) - max(small["actor_peak_rss_mb"])
    held_growth = large["uint8_test_shard_mb"] - small["uint8_test_shard_mb"]
    print(
        f"\n5,000 -> 50,000 images: driver peak {driver_growth:+.0f} MB (limit +200 MB); largest actor peak "
        f"{actor_growth:+.0f} MB for {held_growth:+.0f} MB more uint8 held"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": results,
                    "image_size": args.image_size,
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
