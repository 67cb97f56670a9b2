"""Datasets: scikit-learn's digits (ships with the package), CIFAR-10/100 and ImageFolder (ImageNet layout).

CIFAR is read with torchvision's own reader, an ImageFolder through the run's
index of its files (`image_index.py`); nothing is ever downloaded. Every dataset
yields uint8 images (C, H, W) and an int label; `normalization` says how the
device makes them model input (`device_input.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from workers.data.device_input import (
    CIFAR_MEAN,
    CIFAR_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
)
from workers.data.image_index import ImageIndex, image_index
from workers.data.spec import DatasetSpec

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
SUBSET_SEED = 0  # fixed, so a subset names the same images in every run


class DatasetNotFound(ValueError):
    """The data root does not hold the dataset in the expected on-disk format."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    train_size: int
    test_size: int


@functools.lru_cache(maxsize=8)
def _digits(train: bool, resolution: int) -> TensorDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))
    cut = int(0.8 * len(order))
    idx = order[:cut] if train else order[cut:]
    x = F.interpolate(images[idx], size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x * 255.0).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(x, labels[idx])


def normalization(spec: DatasetSpec) -> Normalization:
    """How the device turns this dataset's uint8 images into model input."""
    if spec.name == "digits":
        return Normalization(DIGITS_MEAN, DIGITS_STD)
    if spec.name in CIFAR_FOLDERS:
        return Normalization(CIFAR_MEAN, CIFAR_STD)
    return Normalization(IMAGENET_MEAN, IMAGENET_STD)


def _index(spec: DatasetSpec) -> ImageIndex:
    root = Path(spec.root).expanduser()
    try:
        return image_index(root, spec.index)
    except (OSError, ValueError) as error:
        raise DatasetNotFound(f"dataset.root: {error}") from None


def index_of(spec: DatasetSpec) -> ImageIndex | None:
    """The ImageFolder's index of files (read from the run's index file, else scanned); None for other datasets."""
    return _index(spec) if spec.name == "imagefolder" else None


def _load(spec: DatasetSpec, train: bool, augment: bool) -> Dataset:
    if spec.name == "digits":
        return _digits(train, spec.resolution)
    root = Path(spec.root).expanduser()
    # The layout is checked first: a wrong root is reported at once, not after importing torchvision.
    if spec.name in CIFAR_FOLDERS:
        if not (root / CIFAR_FOLDERS[spec.name]).is_dir():
            raise DatasetNotFound(
                f"dataset.root: {root} has no {CIFAR_FOLDERS[spec.name]}/ (the python-pickle {spec.name} format)"
            )
    else:
        split = root / ("train" if train else "val")
        if not split.is_dir():
            raise DatasetNotFound(f"dataset.root: {root} has no {split.name}/ folder (layout: <split>/<class>/<image>)")
    # torchvision takes seconds to import, in the controller and in every worker: only when it reads the data.
    from workers.data.disk_formats import ImageFiles, LocalCIFAR10, LocalCIFAR100, cifar_transform, imagenet_transform

    if spec.name in CIFAR_FOLDERS:
        cls = LocalCIFAR10 if spec.name == "cifar10" else LocalCIFAR100
        try:
            return cls(str(root), train=train, transform=cifar_transform(augment, spec.resolution, spec.auto_augment))
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFound(f"dataset.root: {root}/{CIFAR_FOLDERS[spec.name]}: {error}") from None
    index = _index(spec)
    if split.name not in index.splits:
        raise DatasetNotFound(f"dataset.root: {split} has no images")
    transform = imagenet_transform(augment, spec.resolution, spec.auto_augment)
    return ImageFiles(split, index.split(split.name), index.classes, transform)


def _first(dataset: Dataset, count: int | None) -> Dataset:
    """The first `count` images of a fixed permutation (the same in every run)."""
    if count is None or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))
    return Subset(dataset, order[:count].tolist())


def train_dataset(spec: DatasetSpec) -> Dataset:
    return _first(_load(spec, train=True, augment=True), spec.train_subset)


def test_dataset(spec: DatasetSpec) -> Dataset:
    return _first(_load(spec, train=False, augment=False), spec.test_subset)


def calibration_dataset(spec: DatasetSpec, images: int) -> Dataset:
    """A fixed subset of the training images, with the evaluation transform, for BN calibration."""
    return _first(_first(_load(spec, train=True, augment=False), spec.train_subset), images)


def num_classes(spec: DatasetSpec) -> int:
    if spec.name == "digits":
        return 10
    if spec.name == "cifar10":
        return 10
    if spec.name == "cifar100":
        return 100
    return len(_index(spec).classes)


def describe(spec: DatasetSpec) -> DatasetInfo:
    """Open both splits (raising DatasetNotFound if they are not there) and report their sizes."""
    train, test = train_dataset(spec), test_dataset(spec)
    return DatasetInfo(num_classes=num_classes(spec), train_size=len(train), test_size=len(test))


def to_tensors(dataset: Dataset, batch_size: int = 256, loader_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a (small, or sharded) dataset once into uint8 image and label tensors, filled in place."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers)
    images: torch.Tensor | None = None
    labels = torch.empty(len(dataset), dtype=torch.long)  # type: ignore[arg-type]
    at = 0
    for x, y in loader:
        if images is None:
            images = torch.empty((len(dataset), *x.shape[1:]), dtype=x.dtype)  # type: ignore[arg-type]
        images[at : at + len(y)] = x
        labels[at : at + len(y)] = y
        at += len(y)
    if images is None:
        raise ValueError("no images to decode")
    return images, labels
