"""Evaluating subnets: calibrate BN, then top-1/top-5 on the test split.

`SubnetEvaluator` keeps one supernet and switches subnets in place; the
orchestrator runs several as Ray actors, handing them the decoded calibration
and test tensors through the object store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from workers.calibration import calibrate_bn
from workers.supernet.factory import build_space, build_supernet
from workers.supernet.profile import profile_subnet
from workers.supernet.space import SubnetConfig

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, num_classes: int
) -> tuple[float, float | None]:
    model.eval()
    top1 = top5 = 0
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        y = labels[start : start + batch_size]
        ranked = model(x).topk(min(5, num_classes), dim=1).indices
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked == y[:, None]).any(dim=1).sum().item()
    n = len(labels)
    return 100.0 * top1 / n, (100.0 * top5 / n if num_classes > 5 else None)


class SubnetEvaluator:
    def __init__(
        self,
        spec: JobSpec,
        state_dict: dict,
        num_classes: int,
        calibration: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        self.spec, self.num_classes = spec, num_classes
        self.space = build_space(spec)
        self.net = build_supernet(spec, self.space, num_classes).to(memory_format=torch.channels_last)
        self.net.load_state_dict(state_dict)
        self.net.active_dropout = 0.0
        self.calibration, self.test_images, self.test_labels = calibration, test_images, test_labels

    def _calibration_batches(self):
        size = self.spec.evaluation.calibration_batch_size
        for start in range(0, len(self.calibration), size):
            yield self.calibration[start : start + size].contiguous(memory_format=torch.channels_last)

    def evaluate(self, configs: list[dict]) -> list[dict]:
        rows = []
        for data in configs:
            config = SubnetConfig.from_dict(data)
            started = time.time()
            self.net.set_active_subnet(config)
            seen = calibrate_bn(self.net, self._calibration_batches())
            top1, top5 = accuracy(
                self.net, self.test_images, self.test_labels, self.spec.evaluation.test_batch_size, self.num_classes
            )
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
                    "test_images": len(self.test_labels),
                    "eval_seconds": time.time() - started,
                }
            )
        return rows
