"""The on-disk formats torchvision reads: CIFAR's python pickles and the ImageFolder (ImageNet) layout.

Nothing is downloaded: the files must be there. These readers and their
transforms live apart from `datasets.py` because torchvision takes seconds to
import, and the digits data (the quick start) never needs it.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _existence_only(files: list[list[str]]) -> list[list]:
    return [[name, None] for name, _ in files]


class LocalCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader; files are checked to exist, not against the md5 of the official release."""

    train_list = _existence_only(datasets.CIFAR10.train_list)
    test_list = _existence_only(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class LocalCIFAR100(datasets.CIFAR100):
    train_list = _existence_only(datasets.CIFAR100.train_list)
    test_list = _existence_only(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


def cifar_transform(train: bool, resolution: int, auto_augment: bool) -> transforms.Compose:
    steps: list = []
    if train:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))
    if resolution != 32:
        steps.append(transforms.Resize(resolution))
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def imagenet_transform(train: bool, resolution: int, auto_augment: bool) -> transforms.Compose:
    if train:
        steps: list = [transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
    else:
        steps = [transforms.Resize(int(round(resolution / 0.875))), transforms.CenterCrop(resolution)]
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(split: Path, transform: transforms.Compose) -> datasets.ImageFolder:
    return datasets.ImageFolder(str(split), transform=transform)
