"""The scan of an ImageFolder (ImageNet layout), made once per run and kept as a Parquet file in its run directory.

Walking 1.28 M files takes minutes on a network file system; every training
worker, evaluation actor and the planner read this index instead. The scan
follows torchvision's `ImageFolder` exactly (classes sorted, files sorted within
each class, the same extensions), so an index names the same images in the same
order as torchvision would. File names are kept as one fixed-width byte array,
not a list of Python strings, so forked loader workers share it without copying
it page by page through reference counts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.rundir.parquet_table import write_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SplitIndex:
    """One split's images: paths relative to the split folder, and their class indices."""

    paths: np.ndarray  # fixed-width bytes (UTF-8)
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return self.paths[i].decode()


@dataclass(frozen=True)
class ImageIndex:
    root: str  # the folder scanned
    classes: tuple[str, ...]
    splits: dict[str, SplitIndex]

    def split(self, name: str) -> SplitIndex:
        return self.splits[name]

    def write(self, path: Path) -> None:
        """Atomically: a temporary file beside `path`, then a rename."""
        names, paths, labels = [], [], []
        for name, split in self.splits.items():
            names += [name] * len(split)
            paths.append(split.paths)
            labels.append(split.labels)
        table = pa.table(
            {
                "split": pa.array(names, pa.string()),
                "path": pa.array([p.decode() for p in np.concatenate(paths)], pa.string()),
                "label": pa.array(np.concatenate(labels), pa.int32()),
            }
        ).replace_schema_metadata({"root": self.root, "classes": "\n".join(self.classes)})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, table)

    @classmethod
    def read(cls, path: Path) -> ImageIndex:
        table = pq.read_table(path)
        metadata = table.schema.metadata
        classes = tuple(metadata[b"classes"].decode().split("\n"))
        split_column = np.asarray(table.column("split").to_numpy(zero_copy_only=False))
        paths = np.asarray(table.column("path").to_numpy(zero_copy_only=False))
        labels = table.column("label").to_numpy().astype(np.int64)
        splits = {}
        for name in SPLITS:
            mask = split_column == name
            if mask.any():
                splits[name] = SplitIndex(np.char.encode(paths[mask].astype(str), "utf-8"), labels[mask])
        return cls(metadata[b"root"].decode(), classes, splits)


def _scan_split(folder: Path, classes: tuple[str, ...]) -> SplitIndex:
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for root, _, files in sorted(os.walk(class_dir, followlinks=True)):
            relative = os.path.relpath(root, folder)
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(relative, file))
                    labels.append(label)
    return SplitIndex(np.array([p.encode() for p in paths], dtype=bytes), np.array(labels, dtype=np.int64))


def scan_image_folder(root: Path) -> ImageIndex:
    """Walk `root/train` (its class folders name the classes) and `root/val`; raise ValueError if a split is empty."""
    train = root / "train"
    classes = tuple(sorted(entry.name for entry in os.scandir(train) if entry.is_dir()))
    if not classes:
        raise ValueError(f"{train} has no class folders (layout: <split>/<class>/<image>)")
    splits = {}
    for name in SPLITS:
        folder = root / name
        if folder.is_dir():
            split = _scan_split(folder, classes)
            if len(split) == 0:
                raise ValueError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
            splits[name] = split
    return ImageIndex(str(root), classes, splits)


@functools.lru_cache(maxsize=4)
def _scanned(root: str, stamp: float) -> ImageIndex:
    return scan_image_folder(Path(root))


def indexed_root(index_file: Path) -> str | None:
    """The folder an index file lists, without reading the rest of it."""
    return pq.read_schema(index_file).metadata[b"root"].decode()


def image_index(root: Path, index_file: Path | None) -> ImageIndex:
    """The run's index when its file lists `root`, else a scan (one per folder and process while it is unchanged)."""
    if index_file is not None and Path(index_file).is_file() and indexed_root(Path(index_file)) == str(root):
        return ImageIndex.read(Path(index_file))
    stamp = max((root / s).stat().st_mtime for s in SPLITS if (root / s).is_dir())
    return _scanned(str(root), stamp)


def keep_index(index: ImageIndex, index_file: Path) -> None:
    """Write `index` to the run's file unless that already lists the same folder."""
    if not index_file.is_file() or indexed_root(index_file) != index.root:
        index.write(index_file)
