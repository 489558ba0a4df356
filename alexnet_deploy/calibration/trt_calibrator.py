"""Implicit INT8 for TensorRT 8.x/10.x (JetPack 6): an INT8 calibrator fed by the same calibration readers,
writing and reading TensorRT's standard calibration cache, with a provenance sidecar.

TensorRT 10 cannot be installed in this workplace, so the TensorRT-facing part is a thin subclass of the
documented ``trt.IInt8EntropyCalibrator2`` / ``trt.IInt8MinMaxCalibrator`` whose four methods delegate to
:class:`CalibrationFeeder`, which holds all the logic and is tested here with a fake device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from alexnet_deploy.calibration.cache import check_cache, write_sidecar
from alexnet_deploy.errors import UserInputError
from alexnet_deploy.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)
ALGORITHMS = ("entropy2", "minmax")
CALIBRATION_BATCH = 8  # images per calibrator batch (TensorRT calibrates on full batches only)


class CalibrationFeeder:
    """Batches of preprocessed images into one device buffer; the calibration cache with provenance."""

    def __init__(self, x: np.ndarray, batch_size: int, cache_path: str | Path, provenance: dict,
                 force_cache: bool = False, device_alloc: Callable | None = None):
        if batch_size < 1:
            raise UserInputError("calibration batch size must be at least 1")
        x = np.asarray(x)  # the model's input dtype: uint8 for raw-pixel (uint8-nhwc) models, float32 otherwise
        self.x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)
        self.batch_size = int(batch_size)
        self.cache_path = Path(cache_path)
        self.provenance = provenance
        self.force_cache = force_cache
        self._alloc = device_alloc
        self._buffer = None
        self._i = 0

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names) -> list[int] | None:
        if self._i + self.batch_size > len(self.x):
            return None  # TensorRT calibrates on full batches only
        if self._buffer is None:
            alloc = self._alloc
            if alloc is None:
                from alexnet_deploy.runtime.cuda import DeviceBuffer as alloc
            self._buffer = alloc(self.batch_size * self.x[0].nbytes)
        batch = self.x[self._i: self._i + self.batch_size]
        self._buffer.copy_from_host(batch)
        self._i += self.batch_size
        return [self._buffer.ptr] * len(names)  # AlexNet has one input

    def read_calibration_cache(self) -> bytes | None:
        if check_cache(self.cache_path, self.provenance, self.force_cache):
            log.info("using TensorRT calibration cache %s", self.cache_path)
            return self.cache_path.read_bytes()
        return None

    def write_calibration_cache(self, cache) -> None:
        atomic_write_bytes(self.cache_path, bytes(cache))
        write_sidecar(self.cache_path, self.provenance)

    def free(self) -> None:
        if self._buffer is not None:
            self._buffer.free()
            self._buffer = None


def make_calibrator(trt, feeder: CalibrationFeeder, algorithm: str = "entropy2"):
    """A TensorRT INT8 calibrator object (``trt`` is the imported tensorrt module, 8.x-10.x)."""
    if algorithm not in ALGORITHMS:
        raise UserInputError(f"unknown TensorRT calibration algorithm {algorithm!r}; choose {', '.join(ALGORITHMS)}")
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy2" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.feeder = feeder

        def get_batch_size(self):
            return feeder.get_batch_size()

        def get_batch(self, names):
            return feeder.get_batch(names)

        def read_calibration_cache(self):
            return feeder.read_calibration_cache()

        def write_calibration_cache(self, cache):
            feeder.write_calibration_cache(cache)

    return Calibrator()


@dataclass(frozen=True)
class TrtCalibration:
    """What a TensorRT <= 10 implicit-INT8 build calibrates with (the ``alexnet-export trt`` INT8 options)."""
    dataset: str  # digits | CIFAR-10 folder | ImageFolder | file.npy (calibration/data.py)
    num_images: int
    cache: Path  # TensorRT's calibration cache (reused when its provenance sidecar matches)
    algorithm: str = "entropy2"
    force_cache: bool = False


def calibrator_for(trt, onnx_path: Path, meta, calibration: TrtCalibration) -> tuple[object, dict]:
    """The INT8 calibrator for ``onnx_path`` (an FP32 ONNX; ``meta`` its metadata, which names the
    preprocessing) and the record an engine manifest keeps of it (``build.calibration``).

    ``trt`` is the imported tensorrt module (8.x-10.x); the caller sets ``config.int8_calibrator``."""
    from alexnet_deploy.calibration.data import load_calibration_set

    cal = load_calibration_set(calibration.dataset, meta, calibration.num_images)
    cache = Path(calibration.cache)
    prov = {"source_onnx_sha256": sha256_file(onnx_path), "preprocessing": meta.preprocessing.to_dict(),
            "method": calibration.algorithm, "parameters": {"batch": CALIBRATION_BATCH}, **cal.provenance()}
    feeder = CalibrationFeeder(cal.x, CALIBRATION_BATCH, cache, prov, calibration.force_cache)
    calibrator = make_calibrator(trt, feeder, calibration.algorithm)
    return calibrator, {"cache": str(cache), **{k: prov[k] for k in ("method", "num_images", "data_sha256", "dataset")}}
