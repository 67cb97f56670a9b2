"""Subnets evaluated per minute, BN calibration included: the evaluation stage against a plain loop.

All in one run, on the same subnets (FLOP buckets across the supernet's range) and
the same data:

- plain loop: one process; for every subnet it reads the calibration and test images
  again through their datasets (decoding every file), calibrates BN, evaluates;
- the evaluation stage (`orchestrator.evaluation_job.run_evaluation`) with 1 worker,
  then with 2 workers: each actor decodes its shard of the images once (uint8) and
  holds one supernet, switching subnets in place; every subnet is evaluated by all
  shards (BN statistics merged, counts summed).

The data is an ImageFolder of JPEG files: the digits, upsampled to `--image-size`
(default 256, about an ImageNet photo) and read at 32 px through the ImageNet
evaluation transform (resize, centre crop), so reading them costs what reading a
real dataset costs; `--image-size 32` makes reading nearly free and shows the
compute-bound case. The weights are a freshly initialised supernet:
throughput does not depend on what the weights are. Ray's cluster start-up is timed
apart; actor start-up and the one-off decoding are inside the evaluation stage's time.

    .venv/bin/python benchmarks/eval_throughput.py [--image-size 256] [--subnets-per-bucket 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.ray_env import prepare_ray_environment  # noqa: E402

prepare_ray_environment()

from orchestrator.evaluation_job import run_evaluation  # noqa: E402
from orchestrator.plan import make_plan  # noqa: E402
from orchestrator.spec_file import validate_spec  # noqa: E402
from workers.calibration import calibrate_bn  # noqa: E402
from workers.data.datasets import calibration_dataset, normalization, test_dataset  # noqa: E402
from workers.evaluation import count_correct  # noqa: E402
from workers.supernet.space_spec import build_space  # noqa: E402
from workers.supernet.supernet import build_supernet  # noqa: E402


def write_digits_image_folder(root: Path, size: int) -> Path:
    """The digits as <root>/{train,val}/<class>/<i>.JPEG, size x size RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    cut = int(0.8 * len(order))
    for split, indices in (("train", order[:cut]), ("val", order[cut:])):
        for i in indices:
            folder = root / split / f"digit{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{i}.JPEG", quality=90)
    return root


def make_spec(data: Path, storage: Path, run: str, workers: int, threads: int, per_bucket: int):
    return validate_spec(
        {
            "run": run,
            "dataset": {"name": "imagefolder", "root": str(data), "resolution": 32},
            "space": {"width_mult": 0.35, "cifar_variant": True},
            "method": {"name": "deps", "epochs": 2},
            "cluster": {"num_workers": 1},
            "evaluation": {
                "selection": {"name": "buckets", "buckets": 6, "per_bucket": per_bucket},
                "calibration_images": 512,
                "calibration_batch_size": 128,
                "test_batch_size": 256,
                "workers": workers,
                "cpus_per_worker": 1,
                "threads_per_worker": threads,
                "diagnostics": {"enabled": False},
            },
            "storage": {"root": str(storage)},
        },
        run,
    )


def plain_loop(plan, state: dict, threads: int) -> float:
    """Every subnet reads its data again; returns seconds."""
    torch.set_num_threads(threads)
    spec, ev = plan.spec, plan.spec.evaluation
    started = time.time()
    net = build_supernet(spec, build_space(spec), plan.dataset.num_classes)
    net.load_state_dict(state)
    net = net.to(memory_format=torch.channels_last)
    net.active_dropout = 0.0
    cpu = torch.device("cpu")
    model_input = normalization(spec.dataset).to_model_input
    for config in plan.subnets:
        net.set_active_subnet(config)
        calibration = torch.utils.data.DataLoader(
            calibration_dataset(spec.dataset, ev.calibration_images), batch_size=ev.calibration_batch_size
        )
        calibrate_bn(net, (model_input(x, cpu) for x, _ in calibration))
        test = torch.utils.data.DataLoader(test_dataset(spec.dataset), batch_size=ev.test_batch_size)
        count_correct(net, ((model_input(x, cpu), y) for x, y in test), 10)
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subnets-per-bucket", type=int, default=4, help="6 buckets; default 24 subnets")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the plain loop")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all configurations; the fastest counts")
    parser.add_argument("--image-size", type=int, default=256, help="pixels of the stored JPEG files")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    data = write_digits_image_folder(work / "data", args.image_size)
    configurations = [
        ("plain loop, data re-read per subnet", "plain", 1, args.threads),
        ("evaluation stage, 1 worker", "stage-1x2", 1, 2),
        ("evaluation stage, 2 workers", "stage-2x1", 2, 1),
    ]
    torch.manual_seed(0)
    first = make_spec(data, work / "runs", "init", 1, 1, args.subnets_per_bucket)
    state = build_supernet(first, build_space(first), 10).state_dict()
    checkpoint = work / "state.pt"
    torch.save({"model": state, "epoch": 1}, checkpoint)

    started = time.time()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    ray_start = time.time() - started
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for _, name, _, _ in configurations}
    subnets = 0
    try:
        for repeat in range(args.repeats):  # interleaved, so that other load on the machine hits all alike
            for _, name, workers, threads in configurations:
                # A fresh run each time: the evaluation stage skips subnets a run has already evaluated.
                plan = make_plan(
                    make_spec(data, work / "runs", f"{name}-{repeat}", workers, threads, args.subnets_per_bucket)
                )
                subnets = len(plan.subnets)
                load = os.getloadavg()[0]
                started = time.time()
                if name == "plain":
                    plain_loop(plan, state, threads)
                else:
                    assert run_evaluation(plan, checkpoint) == subnets
                times[name].append((time.time() - started, load, os.getloadavg()[0]))
                print(f"[{repeat}] {name}: {times[name][-1][0]:.1f} s (load {load:.1f})", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()

    best = {name: min(t for t, _, _ in runs) for name, runs in times.items()}
    base = best["plain"]
    print(f"{subnets} subnets (6 FLOP buckets x {args.subnets_per_bucket}), 512 calibration + 360 test images,")
    print(
        f"ImageFolder of {args.image_size}x{args.image_size} JPEGs read at 32x32, width 0.35; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, Ray {ray.__version__}"
    )
    print(
        f"Ray cluster start-up (not included below): {ray_start:.1f} s; fastest of {args.repeats} interleaved rounds\n"
    )
    print("| configuration | workers x threads | seconds (each round) | subnets / minute | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for label, name, workers, threads in configurations:
        rounds = ", ".join(f"{t:.1f}" for t, _, _ in times[name])
        secs = best[name]
        rate, speedup = subnets * 60 / secs, base / secs
        print(f"| {label} | {workers} x {threads} | {secs:.1f} ({rounds}) | {rate:.1f} | {speedup:.2f}x |")
    loads = ", ".join(
        f"{name} {min(a for _, a, _ in r):.1f}-{max(b for _, _, b in r):.1f}" for name, r in times.items()
    )
    print(f"\n1-minute load average during each configuration (other work on the machine): {loads}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "subnets": subnets,
                    "image_size": args.image_size,
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                    "ray_start_seconds": ray_start,
                    "runs": {
                        name: [{"seconds": t, "load_before": a, "load_after": b} for t, a, b in r]
                        for name, r in times.items()
                    },
                    "per_minute": {name: subnets * 60 / secs for name, secs in best.items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
