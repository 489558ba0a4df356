"""Dataset readers shared by training, parity and calibration.

A dataset is a list of PIL images (or image paths, opened lazily) with integer labels and class names;
the model's own preprocessing turns it into arrays, so every stage sees the same pixels.
"""
from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from alexnet_deploy.errors import DatasetError
from alexnet_deploy.models.specs import Preprocessing
from alexnet_deploy.runtime.preprocess import IMAGE_SUFFIXES, load_image, preprocess_batch

DIGITS = "digits"
SPLITS = ("train", "heldout", "all")


@dataclass
class ImageDataset:
    name: str
    items: Sequence  # PIL images or file paths
    labels: np.ndarray
    class_names: list[str]
    fingerprint_source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        item = self.items[i]
        return item if isinstance(item, Image.Image) else load_image(item)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "ImageDataset":
        idx = list(indices)
        return ImageDataset(
            name or self.name, [self.items[i] for i in idx], self.labels[idx], self.class_names,
            f"{self.fingerprint_source}[{len(idx)}]",
        )

    def arrays(self, prep: Preprocessing, batch_size: int = 256) -> np.ndarray:
        """All images preprocessed: float32 (N, 3, crop, crop)."""
        return np.concatenate(
            [self.batch(range(i, min(i + batch_size, len(self))), prep) for i in range(0, len(self), batch_size)]
        ) if len(self) else preprocess_batch([], prep)

    def batch(self, indices, prep: Preprocessing) -> np.ndarray:
        return preprocess_batch([self.image(i) for i in indices], prep)


def _split_indices(labels: np.ndarray, heldout_fraction: float = 0.2, seed: int = 0):
    """A fixed stratified split: for each class, a seeded shuffle, the last fraction held out."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * heldout_fraction))
        held.extend(idx[len(idx) - n_held:])
        train.extend(idx[: len(idx) - n_held])
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(held, dtype=int))


def _select(ds: ImageDataset, split: str) -> ImageDataset:
    if split == "all":
        return ds
    train, held = _split_indices(ds.labels)
    return ds.subset(train if split == "train" else held, f"{ds.name}:{split}")


@functools.lru_cache(maxsize=1)
def _all_digits() -> ImageDataset:
    from alexnet_deploy.deps import require

    datasets = require("sklearn.datasets", "the embedded digits dataset")
    bunch = datasets.load_digits()
    images = [
        Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8), mode="L") for img in bunch.images
    ]
    return ImageDataset(DIGITS, images, bunch.target.astype(np.int64), [str(i) for i in range(10)], "sklearn-digits")


def load_digits(split: str = "all") -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as 8-bit grayscale PIL images
    (read once per process; the splits share the images)."""
    return _select(_all_digits(), split)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from None


def is_cifar10_folder(root: Path) -> bool:
    return (root / "batches.meta").is_file() or (root / "data_batch_1").is_file()


def load_cifar10(root: str | os.PathLike, split: str = "all") -> ImageDataset:
    """CIFAR-10 in torchvision's python-batch layout (``cifar-10-batches-py``): data_batch_1..5 + test_batch."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 folder {root} does not exist")
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "heldout": ["test_batch"]}
    wanted = names["train"] + names["heldout"] if split == "all" else names[split]
    files = [root / n for n in wanted if (root / n).is_file()]
    if not files:
        raise DatasetError(f"{root} holds none of {', '.join(wanted)} (CIFAR-10 python batches)")
    class_names = [f"class_{i}" for i in range(10)]
    if (root / "batches.meta").is_file():
        meta = _unpickle(root / "batches.meta")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    images, labels = [], []
    for f in files:
        batch = _unpickle(f)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labs = batch.get(b"labels", batch.get(b"fine_labels"))
            labels.extend(int(x) for x in labs)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{f} is not a CIFAR-10 python batch (expected b'data' Nx3072 and b'labels'): {exc}") from None
        images.extend(Image.fromarray(a) for a in data)
    if len(images) != len(labels):
        raise DatasetError(f"{root}: {len(images)} images but {len(labels)} labels")
    return ImageDataset(f"cifar10:{split}", images, np.asarray(labels, dtype=np.int64), class_names, f"cifar10:{root}")


def load_image_folder(root: str | os.PathLike, split: str = "all") -> ImageDataset:
    """ImageFolder layout: ``root/<class>/<image>``; ``root/train`` + ``root/val`` are used as the split
    when present, otherwise a fixed stratified 80/20 split of the class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and (root / "val").is_dir() and split != "all":
        return load_image_folder(root / ("train" if split == "train" else "val"), "all")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders (expected ImageFolder layout root/<class>/<image>)")
    items, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(
            str(p) for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        items.extend(files)
        labels.extend([i] * len(files))
    if not items:
        raise DatasetError(f"{root} holds no images in its class folders {classes[:5]}")
    ds = ImageDataset(f"folder:{root.name}", items, np.asarray(labels, dtype=np.int64), classes, f"folder:{root}")
    return _select(ds, split)


def load_dataset(spec: str, split: str = "all") -> ImageDataset:
    """``digits`` (embedded), a CIFAR-10 python-batch folder, or an ImageFolder tree."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if spec == DIGITS:
        return load_digits(split)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"dataset {spec!r} not found: give 'digits', a CIFAR-10 python-batch folder or an ImageFolder tree")
    if path.is_dir() and is_cifar10_folder(path):
        return load_cifar10(path, split)
    if path.is_dir():
        return load_image_folder(path, split)
    raise DatasetError(f"dataset {spec!r} is a file; give 'digits' or a folder (CIFAR-10 batches or ImageFolder)")


def balanced_subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """Deterministic class-balanced sample of ``n`` items (round-robin over seeded per-class orders)."""
    if n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    per_class = []
    for c in np.unique(ds.labels):
        idx = np.flatnonzero(ds.labels == c)
        rng.shuffle(idx)
        per_class.append(list(idx))
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for idx in per_class:
            if depth < len(idx) and len(chosen) < n:
                chosen.append(int(idx[depth]))
        depth += 1
    return ds.subset(sorted(chosen), f"{ds.name}[{n}]")


