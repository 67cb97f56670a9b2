"""The Python half of `benchmarks/gpu_check.sh`: synthetic data, the evaluation check, the run's spec, one JSON.

    gpu_check.py images DIR --train N --val N [--size 256]    a synthetic ImageFolder (real JPEG files)
    gpu_check.py evaluation DATA --json FILE [--dry]          part (b): calibrate and evaluate subnets, no Ray
    gpu_check.py spec DATA STORAGE --out SPEC [--dry]         part (c): the 2-epoch DepS spec `deps-orch submit` runs
    gpu_check.py collect --out FILE [--step a.json] [--evaluation b.json] [--run RUN_DIR --cost-report c.json]

Parts (a) and (b) need PyTorch (with torchvision), pydantic and PyYAML only; part (c) the whole package.
`--dry` is the CPU dry mode: the same steps at 32 px on a handful of images, no CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.spec_file import validate_spec  # noqa: E402
from workers.data.datasets import num_classes  # noqa: E402
from workers.evaluation import SubnetEvaluator  # noqa: E402
from workers.selection import spread_over_macs  # noqa: E402
from workers.supernet.space_spec import build_space  # noqa: E402
from workers.supernet.supernet import build_supernet  # noqa: E402

CLASSES = 10


def write_images(root: Path, train: int, val: int, size: int) -> Path:
    """<root>/{train,val}/<wnid>/<i>.JPEG: per class a colour and a stripe frequency, with noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, size)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            c = i % CLASSES
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (c + 1) * ramp)[None, :, None]
            colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256]) / 255.0
            pixels = 0.6 * stripes * colour + 0.4 * rng.random((size, size, 3))
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i}.JPEG", quality=90)
    return root


def sizes(dry: bool) -> dict:
    if dry:
        return {"resolution": 32, "calibration": 32, "batch": 16, "subnets": 2, "gpus": 0}
    return {"resolution": 224, "calibration": 2000, "batch": 200, "subnets": 8, "gpus": 1}


def evaluation_spec(data: Path, dry: bool):
    s = sizes(dry)
    return validate_spec(
        {
            "run": "gpu-check-evaluation",
            "dataset": {"name": "imagefolder", "root": str(data), "resolution": s["resolution"]},
            "space": {"width_mult": 1.0},
            "method": {"name": "deps", "epochs": 2},
            "cluster": {"num_workers": 1},
            "evaluation": {
                "subnets": s["subnets"],
                "calibration_images": s["calibration"],
                "calibration_batch_size": s["batch"],
                "test_batch_size": s["batch"],
                "workers": 1,
                "gpus_per_worker": s["gpus"],
            },
        },
        "gpu-check",
    )


def evaluation_check(data: Path, dry: bool) -> dict:
    """What one evaluation worker does: decode the data once, then per subnet calibrate BN and evaluate."""
    spec = evaluation_spec(data, dry)
    work = spec.worker_spec()
    classes = num_classes(spec.dataset)
    space = build_space(spec)
    torch.manual_seed(0)
    weights = build_supernet(spec, space, classes).state_dict()
    subnets = spread_over_macs(space, classes, spec.evaluation.subnets, spec.seed)
    threads = os.cpu_count() or 1
    started = time.perf_counter()
    evaluator = SubnetEvaluator(work, weights, classes, threads)  # decodes its data (one shard: all of it)
    decoded = time.perf_counter() - started
    if evaluator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    evaluator.evaluate([subnets[0].to_dict()])  # warm-up: kernels chosen
    started = time.perf_counter()
    rows = evaluator.evaluate([s.to_dict() for s in subnets])
    seconds = time.perf_counter() - started
    result = {
        "device": str(evaluator.device),
        "resolution": spec.dataset.resolution,
        "calibration_images": rows[0]["calibration_images"],
        "test_images": rows[0]["test_images"],
        "decode_seconds": decoded,
        "subnets": len(rows),
        "seconds": seconds,
        "subnets_per_minute": 60.0 * len(rows) / seconds,
        "mmacs": [r["macs"] / 1e6 for r in rows],
    }
    if evaluator.device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_spec(data: Path, storage: Path, dry: bool) -> dict:
    """A 2-epoch DepS run on the synthetic ImageFolder, on one GPU worker (NCCL); on the CPU in the dry mode."""
    s = sizes(dry)
    return {
        "run": "gpu-check-deps",
        "seed": 0,
        "precision": "bf16",
        "dataset": {
            "name": "imagefolder",
            "root": str(data),
            "resolution": s["resolution"],
            "batch_size": 8 if dry else 128,
            "loader_workers": 0 if dry else 8,
        },
        "space": {"width_mult": 1.0},
        "method": {"name": "deps", "epochs": 2, "warmup_fraction": 0.5, "eps_ramp_epochs": 1, "subnets_per_step": 4},
        "optimizer": {"lr": 0.1, "lr_batch": 256},
        "cluster": {
            "backend": "local",
            "num_workers": 1,
            "cpus_per_worker": 1 if dry else 8,
            "gpus_per_worker": s["gpus"],
        },
        "forecast": {"steps": 2 if dry else 4},
        "evaluation": {
            "subnets": 2,
            "calibration_images": s["calibration"],
            "calibration_batch_size": s["batch"],
            "test_batch_size": s["batch"],
            "workers": 1,
            "gpus_per_worker": s["gpus"],
        },
        "storage": {"root": str(storage)},
    }


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def collect(step: Path | None, evaluation: Path | None, run_dir: Path | None, cost_report: Path | None) -> dict:
    figures: dict = {"check": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    if step is not None and step.exists():
        figures["step"] = json.loads(step.read_text())
    if evaluation is not None and evaluation.exists():
        figures["evaluation"] = json.loads(evaluation.read_text())
    if run_dir is not None and (run_dir / "epochs.parquet").exists():
        import pyarrow.parquet as pq

        ledger = pq.read_table(run_dir / "epochs.parquet").to_pylist()
        keep = ("epoch", "phase", "wall_seconds", "overhead_seconds", "images_per_second", "device_hours", "dollars")
        figures["run"] = {
            "state": json.loads((run_dir / "state.json").read_text())["state"],
            "ledger": [{k: r[k] for k in keep} for r in sorted(ledger, key=lambda r: r["epoch"])],
        }
        if cost_report is not None and cost_report.exists():
            figures["run"]["cost_report"] = json.loads(cost_report.read_text())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images")
    images.add_argument("root", type=Path)
    images.add_argument("--train", type=int, required=True)
    images.add_argument("--val", type=int, required=True)
    images.add_argument("--size", type=int, default=256)
    evaluation = commands.add_parser("evaluation")
    evaluation.add_argument("data", type=Path)
    evaluation.add_argument("--json", type=Path, required=True)
    evaluation.add_argument("--dry", action="store_true")
    spec = commands.add_parser("spec")
    spec.add_argument("data", type=Path)
    spec.add_argument("storage", type=Path)
    spec.add_argument("--out", type=Path, required=True)
    spec.add_argument("--dry", action="store_true")
    merged = commands.add_parser("collect")
    merged.add_argument("--out", type=Path, required=True)
    merged.add_argument("--step", type=Path)
    merged.add_argument("--evaluation", type=Path)
    merged.add_argument("--run", type=Path)
    merged.add_argument("--cost-report", type=Path)
    args = parser.parse_args()

    if args.command == "images":
        write_images(args.root, args.train, args.val, args.size)
    elif args.command == "evaluation":
        result = evaluation_check(args.data, args.dry)
        args.json.write_text(json.dumps(result, indent=2))
        print(
            f"evaluation: {result['subnets']} subnets in {result['seconds']:.1f}s "
            f"({result['subnets_per_minute']:.1f}/min) on {result['device']}",
            flush=True,
        )
    elif args.command == "spec":
        import yaml

        args.out.write_text(yaml.safe_dump(run_spec(args.data, args.storage, args.dry), sort_keys=False))
    else:
        args.out.write_text(json.dumps(collect(args.step, args.evaluation, args.run, args.cost_report), indent=2))
        print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
