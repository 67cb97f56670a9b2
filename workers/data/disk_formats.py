"""The on-disk formats: CIFAR's python pickles (torchvision's reader) and image files of an ImageFolder.

Nothing is downloaded: the files must be there. These readers and their
transforms live apart from `datasets.py` because torchvision takes seconds to
import, and the digits data (the quick start) never needs it. Transforms end in
uint8 tensors; normalisation happens on the device (`device_input.py`).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from workers.data.image_index import SplitIndex


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
    return transforms.Compose(steps + [transforms.PILToTensor()])


def imagenet_transform(train: bool, resolution: int, auto_augment: bool) -> transforms.Compose:
    if train:
        steps: list = [transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip()]
        if auto_augment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
    else:
        steps = [transforms.Resize(int(round(resolution / 0.875))), transforms.CenterCrop(resolution)]
    return transforms.Compose(steps + [transforms.PILToTensor()])


class ImageFiles(Dataset):
    """The images of one split of an ImageFolder, as its index names them (no directory walk)."""

    def __init__(self, folder: Path, index: SplitIndex, classes: tuple[str, ...], transform: transforms.Compose):
        self.folder, self.index, self.classes, self.transform = str(folder), index, classes, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        with open(f"{self.folder}/{self.index.path(i)}", "rb") as file:
            image = Image.open(file).convert("RGB")
        return self.transform(image), int(self.index.labels[i])
