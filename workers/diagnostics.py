"""Training diagnostics of the DepS paper, taken by rank 0 at the end of chosen epochs.

- Class correlation (DepS appendix A): the full model's logits on test images are
  averaged per *predicted* class (C_i); the heatmap's A_ij is the cosine similarity
  of C_i and C_j. A partially trained full model carries more information about
  non-target classes (less bright off the diagonal) than a fully trained one.
- Gradient diagnostic (DepS Fig. 3): on one minibatch and the weights at the end of
  an epoch, the gradient the next epoch's first step would apply, three ways: the
  full model (teacher step) alone (G_noShrink), every subnet of the step with weight
  1 (G_Shrink), and every subnet with the method's own gradient weights, i.e. ε for
  DepS (G_Shrink(ε)). Per layer: the l2 norm of each, and the cosine similarity of
  the latter two with G_noShrink. By default it is taken where a phase ends and
  another starts: for DepS, at the start of shrinking.

Both work on a copy of the model under a forked RNG, so training is not disturbed,
and are written to the run's own small Parquet tables.
"""

from __future__ import annotations

import copy
import functools
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from workers.calibration import calibrate_bn
from workers.data.datasets import calibration_dataset, normalization, test_dataset, to_tensors
from workers.data.spec import DatasetSpec
from workers.distillation import build_distillation
from workers.evaluation_spec import DiagnosticsConfig
from workers.job import WorkerSpec
from workers.methods import Target, TrainingMethod
from workers.rundir.tables import RunStore
from workers.step import step_rng, subnet_loss

GRADIENTS = ("no_shrink", "shrink", "eps_shrink")


def _phase_ends(method: TrainingMethod) -> list[int]:
    epochs = method.epochs
    return [e for e in range(epochs) if e == epochs - 1 or method.phase(e + 1) != method.phase(e)]


def heatmap_epochs(config: DiagnosticsConfig, method: TrainingMethod) -> set[int]:
    if not config.enabled:
        return set()
    return set(config.heatmap_epochs) if config.heatmap_epochs is not None else set(_phase_ends(method))


def gradient_epochs(config: DiagnosticsConfig, method: TrainingMethod) -> set[int]:
    if not config.enabled:
        return set()
    if config.gradient_epochs is not None:
        return set(config.gradient_epochs)
    return {e for e in _phase_ends(method) if e < method.epochs - 1}


def check_epochs(config: DiagnosticsConfig, method: TrainingMethod) -> None:
    """Raise ValueError naming the field if a chosen epoch is not one the method trains."""
    last = method.epochs - 1
    for field, epochs, latest in (
        ("heatmap_epochs", config.heatmap_epochs, last),
        ("gradient_epochs", config.gradient_epochs, last - 1),
    ):
        for i, epoch in enumerate(epochs or ()):
            if not 0 <= epoch <= latest:
                why = "the last epoch has no next step to probe" if field == "gradient_epochs" else "past the end"
                raise ValueError(
                    f"evaluation.diagnostics.{field}[{i}]: epoch {epoch} is outside 0-{latest} "
                    f"(the run trains epochs 0-{last}; {why})"
                )


@functools.lru_cache(maxsize=4)
def _test_images(dataset: DatasetSpec, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` test images, and only those decoded."""
    test = test_dataset(dataset)
    return to_tensors(Subset(test, range(min(count, len(test)))))


@functools.lru_cache(maxsize=4)
def _training_images(dataset: DatasetSpec, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensors(calibration_dataset(dataset, count))


def class_correlation(logits: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, predicted): A[i, j] is the cosine similarity of the mean logits of predictions i and j.

    Rows and columns of classes never predicted are NaN; `predicted[i]` counts predictions of class i.
    """
    predicted = logits.argmax(dim=1)
    counts = torch.bincount(predicted, minlength=num_classes)
    sums = torch.zeros(num_classes, logits.size(1), dtype=torch.float64).index_add_(0, predicted, logits.double())
    means = sums / counts.clamp(min=1)[:, None]
    unit = F.normalize(means, dim=1)
    matrix = unit @ unit.T
    missing = counts == 0
    matrix[missing, :] = float("nan")
    matrix[:, missing] = float("nan")
    return matrix, counts


def layer_weights(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight of every convolution and linear layer, in definition (about forward) order."""
    return [(name, m.weight) for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def step_gradients(
    net: nn.Module,
    steps: list,
    weights: list[float],
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    distillation,
    seed: int,
) -> list[torch.Tensor]:
    """The accumulated gradient of a minibatch's steps with the given per-step weights (0 skips a step)."""
    net.zero_grad(set_to_none=True)
    teacher = None
    torch.manual_seed(seed)  # the same dropout mask in every variant
    for step, weight in zip(steps, weights):
        if weight == 0.0 and not step.is_teacher:
            continue
        net.set_active_subnet(step.config)
        net.active_dropout = net.dropout_rate if step.dropout else 0.0
        logits = net(images)
        loss, _ = subnet_loss(step, logits, labels, label_smoothing, distillation, teacher, None)
        if weight != 0.0:
            (loss * weight).backward()
        if step.is_teacher:
            teacher = logits.detach()
    return [
        (
            p.grad.detach().flatten().double().clone()
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=torch.float64)
        )
        for _, p in layer_weights(net)
    ]


def gradient_diagnostic(
    net: nn.Module,
    steps: list,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    distillation,
    seed: int,
) -> list[dict]:
    """Per layer and gradient variant: its l2 norm and its cosine similarity with the full-model-only gradient."""
    probe = copy.deepcopy(net)
    probe.train()
    teacher = next(i for i, s in enumerate(steps) if s.is_teacher or i == 0)
    variants = {
        "no_shrink": [s.grad_weight if i == teacher else 0.0 for i, s in enumerate(steps)],
        "shrink": [s.grad_weight if i == teacher else 1.0 for i, s in enumerate(steps)],
        "eps_shrink": [s.grad_weight for s in steps],
    }
    grads = {
        kind: step_gradients(probe, steps, w, images, labels, label_smoothing, distillation, seed)
        for kind, w in variants.items()
    }
    students = [s.grad_weight for i, s in enumerate(steps) if i != teacher]
    epsilon = sum(students) / len(students)
    rows = []
    for index, (name, param) in enumerate(layer_weights(probe)):
        full = grads["no_shrink"][index]
        for kind in GRADIENTS:
            g = grads[kind][index]
            norm = g.norm().item()
            denominator = norm * full.norm().item()
            rows.append(
                {
                    "layer_index": index,
                    "layer": name,
                    "params": param.numel(),
                    "gradient": kind,
                    "student_weight": {"no_shrink": 0.0, "shrink": 1.0, "eps_shrink": epsilon}[kind],
                    "l2_norm": norm,
                    "cosine_to_no_shrink": (g @ full).item() / denominator if denominator > 0 else None,
                }
            )
    return rows


def _heatmap(spec: WorkerSpec, net: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The full model's class-correlation heatmap over the spec's heatmap images: (images, matrix, counts)."""
    config: DiagnosticsConfig = spec.evaluation.diagnostics
    device = next(net.parameters()).device
    model_input = functools.partial(normalization(spec.dataset).to_model_input, device=device)
    images, _ = _test_images(spec.dataset, config.heatmap_images)
    probe = copy.deepcopy(net)
    probe.set_active_subnet(probe.space.largest())
    probe.active_dropout = 0.0
    # Once subnets train, BN statistics mix theirs with the full model's: calibrate as evaluation does.
    calibration, _ = _training_images(spec.dataset, spec.evaluation.calibration_images)
    calibrate_bn(probe, (model_input(x) for x in calibration.split(spec.evaluation.calibration_batch_size)))
    probe.eval()
    with torch.no_grad():
        logits = torch.cat([probe(model_input(x)).float().cpu() for x in images.split(spec.evaluation.test_batch_size)])
    matrix, counts = class_correlation(logits, probe.num_classes)
    return len(images), matrix, counts


def _gradients(
    spec: WorkerSpec, method: TrainingMethod, net: nn.Module, epoch: int, steps_per_epoch: int
) -> list[dict] | None:
    """The gradient probe of epoch + 1's first step; None where there is nothing this probe can compare."""
    steps = method.steps(epoch + 1, 0, steps_per_epoch, step_rng(spec.seed, epoch + 1, 0))
    if len(steps) < 2 or any(s.target not in (Target.LABELS, Target.INPLACE_KD) for s in steps):
        return None  # nothing to compare, or a frozen-teacher step this probe cannot reproduce
    device = next(net.parameters()).device
    model_input = normalization(spec.dataset).to_model_input
    images, labels = _training_images(spec.dataset, spec.evaluation.diagnostics.gradient_images)
    return gradient_diagnostic(
        net,
        steps,
        model_input(images, device=device),
        labels.to(device),
        spec.optimizer.label_smoothing,
        build_distillation(method.distillation()),
        spec.seed + epoch,
    )


def record_diagnostics(
    spec: WorkerSpec,
    store: RunStore,
    method: TrainingMethod,
    net: nn.Module,
    epoch: int,
    steps_per_epoch: int,
    rank: int,
) -> None:
    """At the end of `epoch`, on rank 0: the heatmap and gradient diagnostics the spec asks for at this epoch."""
    config: DiagnosticsConfig = spec.evaluation.diagnostics
    if rank != 0 or not config.enabled:
        return
    device = next(net.parameters()).device
    base = {"run": spec.run, "group": spec.group, "method": method.name, "epoch": epoch, "phase": method.phase(epoch)}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if epoch in heatmap_epochs(config, method):
            started = time.time()
            images, matrix, counts = _heatmap(spec, net)
            seconds = time.time() - started
            now = datetime.now(timezone.utc)
            store.record_class_correlation(
                [
                    {
                        **base,
                        "images": images,
                        "predicted_class": i,
                        "other_class": j,
                        "predicted_count": int(counts[i]),
                        "cosine": None if matrix[i, j].isnan() else matrix[i, j].item(),
                        "seconds": seconds,
                        "recorded_at": now,
                    }
                    for i in range(matrix.size(0))
                    for j in range(matrix.size(1))
                ]
            )
        if epoch in gradient_epochs(config, method) and epoch + 1 < method.epochs:
            started = time.time()
            rows = _gradients(spec, method, net, epoch, steps_per_epoch)
            if rows is None:
                return
            seconds, now = time.time() - started, datetime.now(timezone.utc)
            store.record_gradients(
                [
                    {**base, "probe_epoch": epoch + 1, "probe_phase": method.phase(epoch + 1), **row}
                    | {"seconds": seconds, "recorded_at": now}
                    for row in rows
                ]
            )


def diagnostics_seconds(
    spec: WorkerSpec, method: TrainingMethod, net: nn.Module, steps_per_epoch: int, clock=time.perf_counter
) -> float:
    """What the run's diagnostics will take in all (rank 0's work, which every rank waits for): each kind the
    spec asks for timed once here, on `net` as it is, times the epochs it is recorded at."""
    config: DiagnosticsConfig = spec.evaluation.diagnostics
    if not config.enabled:
        return 0.0
    device = next(net.parameters()).device
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        heatmaps = heatmap_epochs(config, method)
        if heatmaps:
            started = clock()
            _heatmap(spec, net)
            total += (clock() - started) * len(heatmaps)
        probes = sorted(e for e in gradient_epochs(config, method) if e + 1 < method.epochs)
        if probes:
            started = clock()
            probed = _gradients(spec, method, net, probes[0], steps_per_epoch)
            total += (clock() - started) * len(probes) if probed is not None else 0.0
    return total
