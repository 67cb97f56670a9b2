"""Evaluating subnets: calibrate BN, then top-1/top-5 on the test split.

`SubnetEvaluator` keeps one supernet and switches subnets in place; the
orchestrator runs several as Ray actors, handing them the decoded calibration
and test tensors through the object store. The batches are laid out once, when
the evaluator starts, and reused for every subnet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from workers.calibration import calibrate_bn
from workers.job import WorkerSpec
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SubnetConfig
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet


def _batches(images: torch.Tensor, size: int, device: torch.device) -> list[torch.Tensor]:
    return [x.to(device).contiguous(memory_format=torch.channels_last) for x in images.split(size) if x.size(0) > 0]


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, num_classes: int
) -> tuple[float, float | None]:
    device = next(model.parameters(), torch.empty(0)).device
    return accuracy_on_batches(
        model, _batches(images, batch_size, device), labels.to(device).split(batch_size), num_classes
    )


@torch.no_grad()
def accuracy_on_batches(
    model: torch.nn.Module,
    image_batches: Sequence[torch.Tensor],
    label_batches: Sequence[torch.Tensor],
    num_classes: int,
) -> tuple[float, float | None]:
    """Top-1 and top-5 in percent (top-5 is None with 5 classes or fewer)."""
    model.eval()
    top1 = top5 = n = 0
    for x, y in zip(image_batches, label_batches):
        ranked = model(x).topk(min(5, num_classes), dim=1).indices
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
    return 100.0 * top1 / n, (100.0 * top5 / n if num_classes > 5 else None)


class SubnetEvaluator:
    def __init__(
        self,
        spec: WorkerSpec,
        state_dict: dict,
        num_classes: int,
        calibration: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        ev = spec.evaluation
        use_cuda = ev.gpus_per_worker > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda") if use_cuda else torch.device("cpu")
        self.spec, self.num_classes = spec, num_classes
        self.space = build_space(spec)
        self.net = build_supernet(spec, self.space, num_classes)
        self.net.load_state_dict(state_dict)
        self.net.to(self.device, memory_format=torch.channels_last)
        self.net.active_dropout = 0.0
        self.calibration = _batches(calibration, ev.calibration_batch_size, self.device)
        self.test_images = _batches(test_images, ev.test_batch_size, self.device)
        self.test_labels = test_labels.to(self.device).split(ev.test_batch_size)
        self.test_count = len(test_labels)

    def evaluate(self, configs: list[dict]) -> list[dict]:
        rows = []
        for data in configs:
            config = SubnetConfig.from_dict(data)
            started = time.time()
            self.net.set_active_subnet(config)
            seen = calibrate_bn(self.net, self.calibration)
            top1, top5 = accuracy_on_batches(self.net, self.test_images, self.test_labels, self.num_classes)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            profile = profile_subnet(self.space, config, self.num_classes)
            rows.append(
                {
                    "subnet_id": config.subnet_id,
                    "config": config.to_json(),
                    "resolution": config.resolution,
                    "macs": profile.macs,
                    "params": profile.params,
                    "top1": top1,
                    "top5": top5,
                    "calibration_images": seen,
                    "test_images": self.test_count,
                    "eval_seconds": time.time() - started,
                }
            )
        return rows
