"""Our supernet's training step against OFA's reference implementation (the `ofa` package), side by side.

Both networks compute the same function: OFA's freshly initialised weights are
copied into ours (the two state dicts align entry by entry; OFA's kernel-transform
matrices start as the identity, so its 5x5 and 3x3 kernels are the centre crops
that ours are), dropout is off in both, and the script checks that the outputs of
the largest, the smallest and a random subnet agree before it times anything.

Three workloads, each one optimiser step (SGD, momentum 0.9) on the same batch and
the same subnets: the full model alone (cross-entropy), the smallest subnet alone,
and a sandwich step (the largest with the labels, then the smallest and two random
subnets distilling from its detached logits, gradients accumulated). The step is
one function, run on either network; only how a subnet is activated differs. Each
round times both networks back to back (the order alternating between rounds), so
a noisy machine slows both alike; the figures are median images/s over the rounds
and the median of the per-round ratios (ours / OFA's: above 1, ours is faster).

    .venv/bin/pip install -e '.[bench]'      # the ofa package (pure Python)
    .venv/bin/python benchmarks/supernet_step.py [--resolution 128] [--batch 32] [--rounds 7]
        [--steps 3] [--precision fp32 bf16] [--device cpu|cuda] [--without-ofa] [--json FILE]

On a GPU (`benchmarks/gpu_check.sh`): `--device cuda --resolution 224 --batch 128`; peak memory is reported too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.supernet.space import SearchSpace, SubnetConfig, mobilenetv3_space  # noqa: E402
from workers.supernet.supernet import ElasticSupernet  # noqa: E402

Activate = Callable[[nn.Module, SubnetConfig], None]
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def ofa_network(space: SearchSpace, num_classes: int) -> nn.Module:
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    return OFAMobileNetV3(
        n_classes=num_classes,
        bn_param=(0.1, 1e-5),
        dropout_rate=0.0,
        width_mult=1.0,
        ks_list=list(space.kernel_choices),
        expand_ratio_list=list(space.expand_choices),
        depth_list=list(space.depth_choices),
    )


def copy_ofa_weights(ofa: nn.Module, ours: nn.Module) -> int:
    """OFA's weights (and BN statistics) into ours, entry by entry; returns how many tensors."""
    theirs = [(k, v) for k, v in ofa.state_dict().items() if not k.endswith("_matrix")]
    mine = list(ours.state_dict().items())
    if len(theirs) != len(mine):
        raise SystemExit(f"the networks differ: {len(theirs)} OFA tensors, {len(mine)} of ours")
    mapped = {}
    for (their_key, value), (key, own) in zip(theirs, mine):
        if value.shape != own.shape:
            raise SystemExit(f"{their_key} {tuple(value.shape)} does not fit {key} {tuple(own.shape)}")
        mapped[key] = value.clone()
    ours.load_state_dict(mapped)
    return len(mapped)


def activate_ours(net: nn.Module, config: SubnetConfig) -> None:
    net.set_active_subnet(config)


def activate_ofa(net: nn.Module, config: SubnetConfig) -> None:
    """OFA's per-block kernel and expand lists (4 blocks a stage; unused ones are ignored) and per-stage depth."""
    kernels, expands = [], []
    for stage in config.stages:
        pad = 4 - len(stage.kernels)
        kernels += list(stage.kernels) + [stage.kernels[-1]] * pad
        expands += list(stage.expands) + [stage.expands[-1]] * pad
    net.set_active_subnet(ks=kernels, e=expands, d=[len(s.kernels) for s in config.stages])


def training_step(
    net: nn.Module,
    activate: Activate,
    subnets: Sequence[SubnetConfig],
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    dtype: torch.dtype | None,
) -> None:
    """One optimiser step: the first subnet learns the labels, the others distil from its detached logits."""
    optimizer.zero_grad(set_to_none=True)
    teacher = None
    for config in subnets:
        activate(net, config)
        context = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            logits = net(images)
        logits = logits.float()  # losses in fp32
        if teacher is None:
            loss = F.cross_entropy(logits, labels)
            teacher = logits.detach()
        else:
            loss = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher, 1), reduction="batchmean", log_target=True)
        loss.backward()
    optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - started


def largest_difference(ofa: nn.Module, ours: nn.Module, subnets: Sequence[SubnetConfig], images: torch.Tensor) -> float:
    """The largest |output difference| relative to the output's scale, over `subnets`, in eval and train mode."""
    worst = 0.0
    with torch.no_grad():
        for training in (False, True):
            ofa.train(training)
            ours.train(training)
            for config in subnets:
                activate_ofa(ofa, config)
                activate_ours(ours, config)
                a, b = ofa(images), ours(images)
                worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="paired A/B rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per network per round")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--without-ofa", action="store_true", help="time our supernet alone (no ofa package)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    space = mobilenetv3_space(1.0, cifar=False, resolution=args.resolution)
    classes = 1000
    ours = ElasticSupernet(space, classes, dropout=0.0, bn_momentum=0.1)
    networks: dict[str, tuple[nn.Module, Activate]] = {"ours": (ours, activate_ours)}
    rng = random.Random(0)
    randoms = [space.sample(rng) for _ in range(2)]
    images = torch.randn(args.batch, 3, args.resolution, args.resolution)
    labels = torch.randint(0, classes, (args.batch,))
    result: dict = {
        "benchmark": "supernet_step",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "resolution": args.resolution,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    if not args.without_ofa:
        ofa = ofa_network(space, classes)
        result["tensors_mapped"] = copy_ofa_weights(ofa, ours)
        check = images[: min(8, args.batch)]
        result["max_relative_output_difference"] = largest_difference(
            ofa, ours, [space.largest(), space.smallest(), randoms[0]], check
        )
        networks["ofa"] = (ofa, activate_ofa)
        print(
            f"outputs agree to {result['max_relative_output_difference']:.1e} (relative), "
            f"{result['tensors_mapped']} tensors mapped",
            flush=True,
        )
    for net, _ in networks.values():
        net.to(device, memory_format=torch.channels_last).train()
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    labels = labels.to(device)
    workloads = {
        "full": [space.largest()],
        "smallest": [space.smallest()],
        "sandwich": [space.largest(), space.smallest(), *randoms],
    }
    figures = []
    for precision in args.precision:
        dtype = DTYPES[precision]
        if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            print(f"{precision}: not supported on this device; skipped", flush=True)
            continue
        for workload, subnets in workloads.items():
            steps = {}
            for name, (net, activate) in networks.items():
                optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
                steps[name] = functools.partial(training_step, net, activate, subnets, images, labels, optimizer, dtype)
                steps[name]()  # warm-up: kernels chosen, buffers allocated
            seconds: dict[str, list[float]] = {name: [] for name in networks}
            peak: dict[str, int] = {}
            for r in range(args.rounds):
                order = list(networks) if r % 2 == 0 else list(reversed(networks))
                for name in order:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    seconds[name].append(timed_steps(steps[name], args.steps, device))
                    if device.type == "cuda":
                        peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
            images_per_round = args.batch * args.steps
            row: dict = {"precision": precision, "workload": workload, "subnets_per_step": len(subnets)}
            for name in networks:
                row[f"{name}_images_per_s"] = statistics.median(images_per_round / s for s in seconds[name])
                if name in peak:
                    row[f"{name}_peak_memory_gib"] = peak[name] / 2**30
            if "ofa" in networks:
                row["ratio_ours_to_ofa"] = statistics.median(
                    theirs / mine for mine, theirs in zip(seconds["ours"], seconds["ofa"])
                )
            figures.append(row)
            shown = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            print(shown, flush=True)
    result["figures"] = figures
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
