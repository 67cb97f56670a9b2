"""The per-epoch metric a sweep's scheduler stops trials by: the full model's and the smallest subnet's top-1.

Rank 0 measures it after the epoch's checkpoint and ledger timing, on a copy of the
supernet (calibrating BN changes the statistics training keeps): each of the two
subnets has its BN calibrated on `calibration_images` training images, as
evaluation does, then is counted on the first `images` test images. The images
are decoded once per worker (uint8) and kept; the time it takes falls in the next
epoch's overhead, not in the epoch's wall time.
"""

from __future__ import annotations

import copy

import torch

from workers.calibration import calibrate_bn
from workers.data.datasets import calibration_dataset, normalization, test_dataset, to_tensors
from workers.evaluation import count_correct
from workers.job import WorkerSpec
from workers.supernet.supernet import ElasticSupernet

BATCH = 256


class EpochValidation:
    def __init__(self, work: WorkerSpec, num_classes: int, device: torch.device) -> None:
        spec = work.evaluation.validation
        self.num_classes, self.device = num_classes, device
        self.input = normalization(work.dataset)
        test = test_dataset(work.dataset)
        picked = torch.utils.data.Subset(test, range(min(spec.images, len(test))))
        self.images, self.labels = to_tensors(picked, BATCH)
        self.calibration, _ = to_tensors(calibration_dataset(work.dataset, spec.calibration_images), BATCH)

    def _batches(self, images: torch.Tensor, resolution: int):
        return (self.input.to_model_input(x, self.device, resolution) for x in images.split(BATCH))

    def measure(self, net: ElasticSupernet) -> dict[str, float]:
        """{"val_top1": the largest subnet's top-1 %, "val_top1_smallest": the smallest's}."""
        model = copy.deepcopy(net)
        space = model.space
        out = {}
        for key, config in (("val_top1", space.largest()), ("val_top1_smallest", space.smallest())):
            model.set_active_subnet(config)
            calibrate_bn(model, self._batches(self.calibration, config.resolution))
            batches = zip(self._batches(self.images, config.resolution), self.labels.to(self.device).split(BATCH))
            out[key] = count_correct(model, batches, self.num_classes).percent(self.num_classes)[0]
        return out
