"""Datasets: scikit-learn's digits (ships with the package), CIFAR-10/100 and ImageFolder (ImageNet layout).

CIFAR and ImageFolder are read with torchvision's own loaders from the on-disk
formats they define; nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

if TYPE_CHECKING:
    from orchestrator.spec import DatasetSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
SUBSET_SEED = 0  # fixed, so a subset names the same images in every run


class DatasetNotFound(ValueError):
    """The data root does not hold the dataset in the expected on-disk format."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    train_size: int
    test_size: int


def _existence_only(files: list[list[str]]) -> list[list]:
    return [[name, None] for name, _ in files]


class _LocalCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader; files are checked to exist, not against the md5 of the official release."""

    train_list = _existence_only(datasets.CIFAR10.train_list)
    test_list = _existence_only(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class _LocalCIFAR100(datasets.CIFAR100):
    train_list = _existence_only(datasets.CIFAR100.train_list)
    test_list = _existence_only(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


def _digits(train: bool, resolution: int) -> TensorDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))
    cut = int(0.8 * len(order))
    idx = order[:cut] if train else order[cut:]
    x = F.interpolate(images[idx], size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(x, labels[idx])


def _cifar_transform(train: bool, resolution: int, auto_augment: bool) -> transforms.Compose:
    steps: list = []
    if train:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))
    if resolution != 32:
        steps.append(transforms.Resize(resolution))
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def _imagenet_transform(train: bool, resolution: int, auto_augment: bool) -> transforms.Compose:
    if train:
        steps: list = [transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
    else:
        steps = [transforms.Resize(int(round(resolution / 0.875))), transforms.CenterCrop(resolution)]
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _load(spec: DatasetSpec, train: bool, augment: bool) -> Dataset:
    if spec.name == "digits":
        return _digits(train, spec.resolution)
    root = Path(spec.root).expanduser()
    if spec.name in CIFAR_FOLDERS:
        cls = _LocalCIFAR10 if spec.name == "cifar10" else _LocalCIFAR100
        if not (root / CIFAR_FOLDERS[spec.name]).is_dir():
            raise DatasetNotFound(
                f"dataset.root: {root} has no {CIFAR_FOLDERS[spec.name]}/ (the python-pickle {spec.name} format)"
            )
        try:
            return cls(str(root), train=train, transform=_cifar_transform(augment, spec.resolution, spec.auto_augment))
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFound(f"dataset.root: {root}/{CIFAR_FOLDERS[spec.name]}: {error}") from None
    split = root / ("train" if train else "val")
    if not split.is_dir():
        raise DatasetNotFound(f"dataset.root: {root} has no {split.name}/ folder (layout: <split>/<class>/<image>)")
    transform = _imagenet_transform(augment, spec.resolution, spec.auto_augment)
    try:
        return datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise DatasetNotFound(f"dataset.root: {split}: {error}") from None


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
    return len(_load(spec, train=True, augment=False).classes)


def describe(spec: DatasetSpec) -> DatasetInfo:
    """Open both splits (raising DatasetNotFound if they are not there) and report their sizes."""
    train, test = train_dataset(spec), test_dataset(spec)
    return DatasetInfo(num_classes=num_classes(spec), train_size=len(train), test_size=len(test))


def to_tensors(dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a whole (small) dataset once into image and label tensors."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)
