"""Dataset readers shared by training, parity and calibration.

A dataset is a list of PIL images (or image paths, opened lazily) with integer labels and class names;
the model's own preprocessing turns it into arrays, so every stage sees the same pixels.
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from alexnet_deploy.errors import DatasetError, UserInputError
from alexnet_deploy.models.specs import Preprocessing, default_class_names
from alexnet_deploy.runtime.preprocess import IMAGE_SUFFIXES, load_image, preprocess_batch

log = logging.getLogger(__name__)
DIGITS = "digits"
DIGIT_CLASSES = [str(i) for i in range(10)]
SPLITS = ("train", "heldout", "all")
NO_DATASET = "none"
UNLABELLED_SUFFIXES = (".npy",)  # calibration arrays: images without class names


@dataclass
class ImageDataset:
    name: str
    items: Sequence  # PIL images or file paths
    labels: np.ndarray
    class_names: list[str]
    fingerprint_source: str = ""
    root: str = ""  # what to record as the training dataset: "digits" or the resolved root folder


    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        item = self.items[i]
        return item if isinstance(item, Image.Image) else load_image(item)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "ImageDataset":
        idx = list(indices)
        return ImageDataset(
            name or self.name, [self.items[i] for i in idx], self.labels[idx], self.class_names,
            f"{self.fingerprint_source}[{len(idx)}]", self.root,
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
    if _has_train_val(root) and split != "all":
        # labels come from train/'s class folders, so a val/ that lacks a class keeps the same indices
        return _load_classes(root / ("train" if split == "train" else "val"), _folder_classes(root / "train"))
    return _select(_load_classes(root, _folder_classes(root)), split)


def _has_train_val(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _folder_classes(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders (expected ImageFolder layout root/<class>/<image>)")
    return classes


def _load_classes(root: Path, classes: list[str]) -> ImageDataset:
    extra = sorted(set(_folder_classes(root)) - set(classes))
    if extra:
        raise DatasetError(f"{root} has class folders that {root.parent / 'train'} lacks: {', '.join(extra[:5])}; "
                           "every class needs training images")
    items, labels, empty = [], [], []
    for i, c in enumerate(classes):
        if not (root / c).is_dir():
            continue
        files = sorted(
            str(p) for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        items.extend(files)
        labels.extend([i] * len(files))
        if not files:
            empty.append(c)
    if not items:
        raise DatasetError(f"{root} holds no images in its class folders {classes[:5]}")
    if empty:  # calibration and parity would silently never see these classes
        log.warning("%s: class folder(s) %s hold no images (suffixes %s); those classes are not represented", root,
                    ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else ""),
                    "/".join(IMAGE_SUFFIXES))
    return ImageDataset(f"folder:{root.name}", items, np.asarray(labels, dtype=np.int64), classes, f"folder:{root}")


def load_dataset(spec: str, split: str = "all") -> ImageDataset:
    """``digits`` (embedded), a CIFAR-10 python-batch folder, or an ImageFolder tree."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = _dataset_path(spec)
    if path is None:
        ds = load_digits(split)
    elif is_cifar10_folder(path):
        ds = load_cifar10(path, split)
    else:
        ds = load_image_folder(path, split)
    ds.root = dataset_root(spec)
    return ds


def _dataset_path(spec: str) -> Path | None:
    if spec == DIGITS:
        return None
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"dataset {spec!r} not found: give 'digits', a CIFAR-10 python-batch folder or an ImageFolder tree")
    if not path.is_dir():
        raise DatasetError(f"dataset {spec!r} is a file; give 'digits' or a folder (CIFAR-10 batches or ImageFolder)")
    return path


def dataset_root(spec: str) -> str:
    """What a model records as its training dataset: ``digits``, or the dataset's root folder, resolved
    (not a split name like ``folder:train``), so later commands find it from any working directory."""
    return DIGITS if spec == DIGITS else os.path.realpath(spec)


def dataset_class_names(spec: str) -> list[str]:
    """A dataset's class names without reading its images."""
    path = _dataset_path(spec)
    if path is None:
        return list(DIGIT_CLASSES)
    if is_cifar10_folder(path):
        ds_meta = path / "batches.meta"
        if ds_meta.is_file():
            return [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(ds_meta).get(b"label_names", [])]
        return [f"class_{i}" for i in range(10)]
    return _folder_classes(path / "train" if _has_train_val(path) else path)


def recorded_dataset(value: str | None) -> str:
    """The usable training dataset recorded in a checkpoint or metadata (``digits`` or an absolute root);
    older records (``digits:train``, ``folder:train``) map to ``digits`` or nothing."""
    value = value or ""
    if value == DIGITS or value.startswith(DIGITS + ":"):
        return DIGITS
    return value if os.path.isabs(value) else ""


def _generic(class_names) -> bool:
    return list(class_names) == default_class_names(len(class_names))


def dataset_for_model(spec: str | None, class_names, recorded: str = "", option: str = "--dataset") -> str | None:
    """The dataset a command runs a model on: ``spec`` when given (checked against the model's class names),
    else the model's recorded training dataset, else digits when the model's classes are digits (or unnamed).
    Returns None for ``none``. Never silently a dataset whose classes differ from the model's."""
    if spec == NO_DATASET:
        return None
    if spec in (None, "", "auto"):
        rec = recorded_dataset(recorded)
        if rec:
            if rec != DIGITS and not os.path.isdir(rec):
                raise DatasetError(f"the model was trained on {rec}, which is not here; pass {option} with that "
                                   f"data (or {option} none)")
            spec = rec
        elif list(class_names) == DIGIT_CLASSES or _generic(class_names):
            return DIGITS
        else:
            shown = ", ".join(list(class_names)[:4]) + (", ..." if len(class_names) > 4 else "")
            raise UserInputError(f"the model's classes ({shown}) are not digits and its metadata records no "
                                 f"training dataset; pass {option} FOLDER (its ImageFolder or CIFAR-10 data)")
    if spec.endswith(UNLABELLED_SUFFIXES) or spec in ("synthetic", "random"):
        return spec
    _label_map(dataset_class_names(spec), class_names, spec, option)  # raises on a mismatch
    return spec


def _label_map(ds_names, class_names, spec: str, option: str = "--dataset") -> np.ndarray | None:
    """Dataset label index -> model class index, or None when the model's classes are unnamed."""
    ds_names, class_names = list(ds_names), list(class_names)
    if ds_names == class_names:
        return np.arange(len(ds_names))
    if _generic(class_names) and not set(ds_names) & set(class_names):
        return None  # an untrained / unnamed model: the images are used without labels
    missing = [n for n in ds_names if n not in class_names]
    if missing:
        raise DatasetError(
            f"dataset {spec} has classes the model does not know ({', '.join(missing[:4])}; the model has "
            f"{', '.join(class_names[:4])}{', ...' if len(class_names) > 4 else ''}); pass {option} with the data "
            "the model was trained on")
    mapping = np.array([class_names.index(n) for n in ds_names])
    log.warning("dataset %s labels mapped to the model's classes by name: %s", spec,
                ", ".join(f"{n}->{j}" for n, j in zip(ds_names, mapping)))
    return mapping


def labels_for_model(ds: ImageDataset, class_names) -> np.ndarray | None:
    """``ds.labels`` as indices of the model's classes (by name), None when the model's classes are unnamed;
    a dataset with classes the model lacks is a :class:`DatasetError`."""
    mapping = _label_map(ds.class_names, class_names, ds.root or ds.name)
    return None if mapping is None else mapping[ds.labels]


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


