"""A training worker's loader: its shard of the training set, each sample augmented under a seed of its own.

DataLoader workers seed themselves once, when they start; with persistent
workers that would be once per run, and with every rank seeding from the
spec's seed, loader worker w of every rank would draw the same crops. So the
sampler tags each index with its epoch, and every sample is augmented under a
seed of (seed, epoch, index): a sample's crops are new each epoch, no two
samples (on any rank, or loader worker) share a stream, and an epoch resumed at a
step (`EpochTaggedSampler.resume_at`) augments its remaining samples exactly as
the uninterrupted epoch would have, whichever loader worker reads them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from workers.data.datasets import train_dataset
from workers.data.spec import DatasetSpec


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class EpochTaggedSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch, (epoch, index); it can resume an epoch part-way."""

    _skip = 0

    def resume_at(self, samples: int) -> None:
        """The next epoch iterated starts after its first `samples` indices (those were trained already)."""
        self._skip = samples

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        indices = list(super().__iter__())[skip:]
        return ((epoch, i) for i in indices)


class SeededSamples(Dataset):
    """Reads (epoch, index) keys; each sample's transforms draw from torch, random and numpy seeded for it.

    In the training process itself (no loader workers) the global generators are restored afterwards, so the
    training's own stream (dropout) is not touched by the loading.
    """

    def __init__(self, data: Dataset, seed: int) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = augmentation_seed(self.seed, epoch, index)
        if get_worker_info() is not None:
            _seed_all(seed)
            return self.data[index]
        python, numpy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            _seed_all(seed)
            try:
                return self.data[index]
            finally:
                random.setstate(python)
                np.random.set_state(numpy)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def distributed_train_loader(
    dataset: DatasetSpec, seed: int, rank: int, world: int, pin_memory: bool
) -> tuple[DataLoader, EpochTaggedSampler]:
    """This worker's shard of the training set, in full batches of uint8 images; a batch per worker must fit."""
    data = train_dataset(dataset)
    sampler = EpochTaggedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    workers = dataset.loader_workers
    loader = DataLoader(
        SeededSamples(data, seed),
        batch_size=dataset.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=dataset.persistent_workers and workers > 0,
        prefetch_factor=dataset.prefetch_factor if workers > 0 else None,
    )
    if len(loader) == 0:
        raise ValueError(
            f"dataset.batch_size {dataset.batch_size} x {world} workers exceeds the {len(data)} training images"
        )
    return loader, sampler
