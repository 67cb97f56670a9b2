import pytest
import torch

from orchestrator.spec import DatasetSpec
from tests.disk_formats import write_cifar10, write_cifar100, write_image_folder
from workers.data import datasets as ds
from workers.data.datasets import DatasetNotFound, calibration_dataset, describe, to_tensors, train_dataset


def test_cifar10_python_batches_are_read_by_torchvision(tmp_path):
    spec = DatasetSpec(name="cifar10", root=write_cifar10(tmp_path), resolution=32)
    info = describe(spec)
    assert (info.num_classes, info.train_size, info.test_size) == (10, 100, 30)
    image, label = train_dataset(spec)[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    images, labels = to_tensors(ds.test_dataset(spec))
    assert images.shape == (30, 3, 32, 32) and labels.dtype == torch.long


def test_cifar100_and_resolution_change(tmp_path):
    spec = DatasetSpec(name="cifar100", root=write_cifar100(tmp_path), resolution=24, train_subset=64)
    info = describe(spec)
    assert (info.num_classes, info.train_size, info.test_size) == (100, 64, 50)
    assert ds.test_dataset(spec)[0][0].shape == (3, 24, 24)


def test_image_folder_in_imagenet_layout(tmp_path):
    spec = DatasetSpec(name="imagefolder", root=write_image_folder(tmp_path), resolution=32)
    info = describe(spec)
    assert (info.num_classes, info.train_size, info.test_size) == (3, 24, 12)
    assert train_dataset(spec)[0][0].shape == (3, 32, 32)
    assert ds.test_dataset(spec)[0][0].shape == (3, 32, 32)


def test_digits_ship_with_the_package_and_subsets_are_fixed():
    spec = DatasetSpec(name="digits", resolution=16, train_subset=100)
    info = describe(spec)
    assert (info.num_classes, info.train_size, info.test_size) == (10, 100, 360)
    a, _ = to_tensors(calibration_dataset(spec, 50))
    b, _ = to_tensors(calibration_dataset(spec, 50))
    assert a.shape == (50, 3, 16, 16) and torch.equal(a, b)


@pytest.mark.parametrize(
    "name,message",
    [
        ("cifar10", "has no cifar-10-batches-py/"),
        ("cifar100", "has no cifar-100-python/"),
        ("imagefolder", "has no train/ folder"),
    ],
)
def test_missing_data_says_which_root_and_format(tmp_path, name, message):
    with pytest.raises(DatasetNotFound, match=f"dataset.root: .* {message}"):
        describe(DatasetSpec(name=name, root=tmp_path / "nowhere"))


def test_incomplete_cifar_folder_is_reported(tmp_path):
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFound, match="dataset.root"):
        describe(DatasetSpec(name="cifar10", root=root))
