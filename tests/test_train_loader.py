"""The training input path on two real gloo ranks: uint8 batches, augmentation seeded per (rank, epoch, loader
worker) with persistent loader workers, and the run's index file read instead of the folder being walked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from workers.data.image_index import ImageIndex, scan_image_folder
from workers.data.spec import DatasetSpec
from workers.data.train_loader import distributed_train_loader
from workers.step import step_resolution


def _identical_images(root: Path, per_class: int) -> None:
    """Every file the same picture (a diagonal ramp), so any difference between two samples is augmentation."""
    ramp = np.add.outer(np.arange(48), 2 * np.arange(48)).astype(np.uint8)
    pixels = np.stack([ramp, ramp.T, 255 - ramp], axis=2)
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", format="JPEG", quality=95)


def _rank(rank: int, world: int, init_file: str, spec_json: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    import workers.data.image_index as image_index

    def no_walk(root):
        raise AssertionError(f"{root} was walked: the index file should have been read")

    image_index.scan_image_folder = no_walk
    spec = DatasetSpec.model_validate_json(spec_json)
    loader, sampler = distributed_train_loader(spec, seed=7, rank=rank, world=world, pin_memory=False)
    seen = {}
    for epoch in (0, 1, 0):  # epoch 0 again, from the same persistent loader workers
        sampler.set_epoch(epoch)
        seen.setdefault(epoch, []).append(torch.cat([images for images, _ in loader]))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"epochs": seen, "images": len(loader.dataset), "workers": loader.num_workers})
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_two_ranks_draw_different_crops_each_epoch_and_read_the_index(tmp_path):
    root = tmp_path / "folder"
    _identical_images(root, per_class=8)
    index_file = tmp_path / "run" / "image_index.parquet"
    scan_image_folder(root).write(index_file)
    (root / "train" / "n00000000" / "img_9.JPEG").write_bytes(
        (root / "train" / "n00000000" / "img_0.JPEG").read_bytes()
    )
    spec = DatasetSpec(name="imagefolder", root=root, resolution=24, batch_size=4, loader_workers=2, index=index_file)
    assert spec.persistent_workers
    out = tmp_path / "out.pt"
    args = (2, str(tmp_path / "init"), spec.model_dump_json(), str(out))
    mp.start_processes(_rank, args=args, nprocs=2, join=True, start_method="fork")  # no second import of torch
    first, second = torch.load(out, weights_only=False)

    assert first["images"] == second["images"] == 16  # the index's 16 files, not the 17 now in the folder
    assert first["workers"] == 2
    a, b = first["epochs"], second["epochs"]
    assert a[0][0].dtype == torch.uint8 and a[0][0].shape == (8, 3, 24, 24)  # 2 batches of 4 per rank
    assert not torch.equal(a[0][0], b[0][0])  # the two ranks crop differently
    crops = {x.numpy().tobytes() for x in torch.cat([a[0][0], b[0][0]])}
    assert len(crops) == 16  # no two samples alike: not across ranks, nor across a rank's loader workers
    assert not torch.equal(a[0][0], a[1][0])  # a new epoch, new crops
    assert torch.equal(a[0][0], a[0][1]) and torch.equal(b[0][0], b[0][1])  # and an epoch's crops are reproducible


def test_the_index_lists_what_torchvision_image_folder_lists(tmp_path):
    from torchvision import datasets

    from tests.disk_formats import write_image_folder

    root = write_image_folder(tmp_path, classes=3, train=5, val=2)
    (root / "train" / "n00000001" / "notes.txt").write_text("not an image")
    index = scan_image_folder(root)
    index.write(tmp_path / "index.parquet")
    again = ImageIndex.read(tmp_path / "index.parquet")
    for split in ("train", "val"):
        reference = datasets.ImageFolder(str(root / split))
        assert again.classes == tuple(reference.classes)
        listed = [
            (str(root / split / again.split(split).path(i)), int(again.split(split).labels[i]))
            for i in range(len(again.split(split)))
        ]
        assert listed == [(path, label) for path, label in reference.samples]
    assert os.path.samefile(again.root, root)


def _resolution_rank(rank: int, world: int, init_file: str, spec_json: str, out: str) -> None:
    from workers.job import WorkerSpec
    from workers.training_loop import train_step
    from workers.worker_setup import set_up_worker

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    setup = set_up_worker(WorkerSpec.model_validate_json(spec_json), rank, world, torch.device("cpu"))
    seen: list[int] = []
    setup.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    setup.sampler.set_epoch(0)
    per_step = []
    for step, (images, labels) in enumerate(setup.loader):
        before = len(seen)
        train_step(setup, 0, step, images, labels, lr=0.01)
        per_step.append(sorted(set(seen[before:])))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, per_step)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_every_rank_trains_a_step_at_the_same_random_resolution(tmp_path):
    from workers.job import WorkerSpec

    root = tmp_path / "folder"
    _identical_images(root, per_class=16)
    spec = WorkerSpec(
        run="resolution",
        dataset={"name": "imagefolder", "root": str(root), "resolution": 32, "batch_size": 2},
        space={"width_mult": 0.35, "cifar_variant": True, "resolutions": [16, 20, 24, 28, 32]},
        method={"name": "deps", "epochs": 2},
    )
    out = tmp_path / "out.pt"
    args = (2, str(tmp_path / "init"), spec.model_dump_json(), str(out))
    mp.start_processes(_resolution_rank, args=args, nprocs=2, join=True, start_method="fork")
    first, second = torch.load(out, weights_only=False)
    assert len(first) == 8  # 32 images, 2 ranks x 2 a step
    assert first == second  # the same resolution on both ranks, step by step
    assert all(len(r) == 1 and r[0] in (16, 20, 24, 28, 32) for r in first)  # one per step, from the space
    drawn = [step_resolution((16, 20, 24, 28, 32), 0, 0, step) for step in range(8)]
    assert [r[0] for r in first] == drawn and len(set(drawn)) > 1  # drawn anew each step from the shared stream
