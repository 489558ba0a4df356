"""Calibration data: the same readers and preprocessing as the runtime, deterministic class-balanced
sampling, a fingerprint of exactly what was fed, and ORT's one-method reader protocol (``get_next``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import DatasetError, UserInputError
from alexnet_deploy.runtime.metadata import ModelMetadata

MIN_IMAGES = 16  # fewer than this gives ranges that are noise, not statistics


@dataclass
class CalibrationSet:
    name: str
    x: np.ndarray  # (N, *meta.input_dims) in meta.input_dtype: what the model's input takes (model_batch)
    labels: np.ndarray | None
    class_names: list[str] | None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.x).tobytes()).hexdigest()

    def provenance(self) -> dict:
        return {"dataset": self.name, "num_images": int(len(self.x)), "data_sha256": self.fingerprint}


def _from_npy(path: Path, meta: ModelMetadata, n: int) -> CalibrationSet:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as a .npy array: {exc}") from None
    c, h, w = meta.input_shape
    normalized = meta.input_format == "float-nchw"  # raw-pixel models take only images (a float array is ambiguous)
    if normalized and arr.ndim == 4 and arr.shape[1:] == (c, h, w) and arr.dtype.kind == "f":
        x = arr.astype(np.float32)  # already preprocessed NCHW
    elif arr.ndim == 4 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
        from PIL import Image

        from alexnet_deploy.runtime.preprocess import model_batch

        x = model_batch([Image.fromarray(a) for a in arr], meta)
    else:
        raise DatasetError(f"{path} has shape {arr.shape} ({arr.dtype}); expected "
                           + (f"preprocessed float (N, {c}, {h}, {w}) or " if normalized else "")
                           + "uint8 RGB images (N, H, W, 3)")
    return CalibrationSet(f"npy:{path.name}", x[:n], None, None)


def load_calibration_set(source: str, meta: ModelMetadata, num_images: int = 512, split: str = "train",
                         allow_synthetic: bool = False, seed: int = 0) -> CalibrationSet:
    """``source``: digits | CIFAR-10 folder | ImageFolder tree | file.npy | synthetic (needs allow_synthetic)."""
    if num_images < 1:
        raise UserInputError("--num-images must be at least 1")
    if source in ("synthetic", "random"):
        if not allow_synthetic:
            raise UserInputError("calibrating on random data gives INT8 models that fail on real images; "
                                 "give a real dataset (--dataset digits | FOLDER | FILE.npy) or pass --allow-synthetic")
        from alexnet_deploy.runtime.preprocess import random_model_input

        return CalibrationSet("synthetic", random_model_input(meta, num_images, seed), None, None)
    if source.endswith(".npy"):
        cal = _from_npy(Path(source), meta, num_images)
    else:
        from alexnet_deploy.data.datasets import balanced_subset, load_dataset

        from alexnet_deploy.runtime.preprocess import model_batch

        ds = balanced_subset(load_dataset(source, split), num_images, seed)
        x = np.concatenate([model_batch([ds.image(j) for j in range(i, min(i + 256, len(ds)))], meta)
                            for i in range(0, len(ds), 256)]) if len(ds) else model_batch([], meta)
        cal = CalibrationSet(f"{source}:{split}", x, ds.labels, ds.class_names)
    if len(cal.x) < min(MIN_IMAGES, num_images):
        if split == "heldout":  # the evaluation half: say which part is short, not "the dataset"
            raise DatasetError(f"the held-out part of {source} has only {len(cal.x)} images; the INT8 accuracy check "
                               f"needs at least {min(MIN_IMAGES, num_images)}: add images, or give a folder with "
                               "train/ and val/ sub-folders")
        raise DatasetError(f"{source} gave only {len(cal.x)} images; calibration needs at least "
                           f"{min(MIN_IMAGES, num_images)} (ideally 256-1024)")
    return cal


class ArrayReader:
    """onnxruntime.quantization.CalibrationDataReader over the model's input array (model_batch), in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int = 32, static_batch: int | None = None):
        self.x, self.input_name = x, input_name
        self.batch_size = static_batch or batch_size
        self.static = static_batch is not None
        self.rewind()

    def rewind(self) -> None:
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self.x):
            return None
        xb = self.x[self._i: self._i + self.batch_size]
        self._i += self.batch_size
        if self.static and len(xb) < self.batch_size:
            return None  # a static-batch model cannot take a short tail batch
        return {self.input_name: xb}
