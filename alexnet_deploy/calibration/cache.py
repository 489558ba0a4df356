"""Provenance of calibration caches (ORT tensor ranges, TensorRT calibration caches): a JSON sidecar
next to the cache; reusing a cache made from another model, preprocessing, method or data is refused."""
from __future__ import annotations

import json
from pathlib import Path

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.fileio import atomic_write_json

CHECKED = ("source_onnx_sha256", "preprocessing", "method", "parameters", "num_images", "data_sha256")


def sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".provenance.json")


def check_cache(cache: Path, wanted: dict, force: bool = False) -> bool:
    """True when ``cache`` exists and matches ``wanted`` (False when absent). Raises on a stale cache."""
    cache = Path(cache)
    if not cache.exists():
        return False
    side = sidecar(cache)
    try:
        have = json.loads(side.read_text())
    except (OSError, ValueError):
        have = None
    if have is None:
        if force:
            return True
        raise UserInputError(f"calibration cache {cache} has no provenance file ({side.name}); delete it to "
                             "recalibrate or pass --force-cache to use it anyway")
    stale = [k for k in CHECKED if have.get(k) != wanted.get(k)]
    if stale and not force:
        raise UserInputError(
            f"calibration cache {cache} is stale: {', '.join(stale)} differ from this run; delete it to "
            "recalibrate or pass --force-cache to use it anyway"
        )
    return True


def write_sidecar(cache: Path, prov: dict) -> None:
    atomic_write_json(sidecar(Path(cache)), {k: prov.get(k) for k in (*CHECKED, "dataset")})
