"""Writers of tiny datasets in the exact on-disk formats the real loaders read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _batch(rng: np.random.Generator, n: int, classes: int, label_key: str) -> dict:
    labels = rng.integers(0, classes, n)
    # Class-dependent mean colour, so the data is learnable.
    data = (rng.integers(0, 60, (n, 3, 32, 32)) + (labels * (190 // classes))[:, None, None, None]).astype(np.uint8)
    return {"data": data.reshape(n, 3072), label_key: labels.tolist(), "filenames": [f"{i}.png" for i in range(n)]}


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> Path:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, python pickles as distributed."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(rng, per_batch, 10, "labels")))
    (folder / "test_batch").write_bytes(pickle.dumps(_batch(rng, test, 10, "labels")))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_cifar100(root: Path, train: int = 200, test: int = 50, seed: int = 0) -> Path:
    """cifar-100-python/{train,test,meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", train), ("test", test)):
        batch = _batch(rng, n, 100, "fine_labels")
        batch["coarse_labels"] = [label // 5 for label in batch["fine_labels"]]
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_image_folder(root: Path, classes: int = 3, train: int = 8, val: int = 4, size: int = 40) -> Path:
    """ImageNet layout: <root>/{train,val}/<wnid>/<image>.JPEG, real JPEG files."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3)) + c * 80
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i}.JPEG", format="JPEG")
    return root
