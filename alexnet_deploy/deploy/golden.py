"""Write a deployment folder's golden set (build host: torch and the dataset are here; the reader,
``parity/golden.py``, needs neither). See that module for the layout and the two forms inputs are stored in."""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import DatasetError
from alexnet_deploy.parity.golden import (FLOAT_INPUTS_MAX_BYTES, GATES, GOLDEN_SCHEMA, INPUTS, LABELS, MANIFEST,
                                          PIXELS, REFERENCE)

SEED = 0  # the held-out sample: class-balanced, deterministic (the parity step draws its set the same way)


def stored_form(n: int, crop: int, input_format: str) -> str:
    """``model-input`` when the model takes normalized floats and they fit in FLOAT_INPUTS_MAX_BYTES, or when
    the model takes uint8 pixels (then they are its input); ``pixels`` otherwise (the 224/227 variants)."""
    if input_format == "uint8-nhwc":
        return "pixels"
    if input_format == "float-nchw" and n * 3 * crop * crop * 4 <= FLOAT_INPUTS_MAX_BYTES:
        return "model-input"
    return "pixels"


def gates_for(overrides: dict | None) -> dict[str, dict]:
    """The parity gates per precision (``parity/tolerances.py`` with the deployment's ``--tol`` overrides)."""
    from alexnet_deploy.parity.tolerances import TOLERANCES, tolerances_for

    return {p: tolerances_for(p, overrides).as_dict() for p in TOLERANCES}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_golden(loaded, dataset: str, num_images: int, out: Path, *, tolerances: dict | None = None,
                 dataset_id: dict | None = None, input_format: str = "float-nchw", echo=print) -> dict:
    """Held-out images of ``dataset`` -> ``out/`` (inputs, labels, PyTorch FP32 outputs of ``loaded``, gates,
    manifest.json with each file's sha256). Returns a summary for the provenance record."""
    from alexnet_deploy.benchmarks.machine import machine_info
    from alexnet_deploy.data.datasets import balanced_subset, labels_for_model, load_dataset
    from alexnet_deploy.fileio import atomic_write_bytes, atomic_write_json, sha256_file
    from alexnet_deploy.runtime.preprocess import model_pixels, normalize_pixels, pixels_as_input
    from alexnet_deploy.runtime.runners.torch_runner import TorchRunner

    prep = loaded.preprocessing
    held = balanced_subset(load_dataset(dataset, "heldout"), num_images, SEED)
    if len(held) == 0:
        raise DatasetError(f"{dataset} has no held-out images for the golden set")
    labels = labels_for_model(held, list(loaded.class_names))
    pixels = np.stack([model_pixels(held.image(i), prep) for i in range(len(held))])
    x = normalize_pixels(pixels, prep)  # exactly what the parity step's reference sees (ImageDataset.arrays)
    with TorchRunner(loaded) as ref_runner:
        reference = ref_runner.infer_batches(x, 64).astype(np.float32)
    form = stored_form(len(held), prep.crop, input_format)
    if form == "model-input":
        inputs_name, arr = INPUTS, pixels_as_input(pixels, input_format, prep)
    else:
        inputs_name, arr = PIXELS, pixels
    files = {inputs_name: _npy(arr), REFERENCE: _npy(reference)}
    if labels is not None:
        files[LABELS] = _npy(np.asarray(labels, dtype=np.int64))
    files[GATES] = (json.dumps(gates_for(tolerances), indent=2) + "\n").encode()
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    import torch

    manifest = {
        "schema": GOLDEN_SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": len(held),
        "inputs": {"file": inputs_name, "stored": form, "dtype": str(arr.dtype), "shape": list(arr.shape),
                   "input_format": input_format if form == "model-input" else "uint8-nhwc pixels",
                   "how": ("the model's input as the runtime feeds it (normalized float32 NCHW)" if form == "model-input"
                           else "uint8 RGB pixels after resize + center crop on the build host (Pillow); the target "
                                "normalizes them with runtime.preprocess.pixels_as_input")},
        "preprocessing": prep.to_dict(),
        "class_names": list(loaded.class_names),
        "labels": LABELS if labels is not None else None,
        "reference": {"file": REFERENCE, "output_kind": "probabilities" if loaded.softmax else "logits",
                      "engine": "torch (PyTorch eager, FP32, CPU)", "variant": loaded.variant,
                      "weights_sha256": loaded.source_sha256, "torch": torch.__version__},
        "gates": GATES,
        "dataset": {"spec": dataset, "subset": held.name, "seed": SEED, **({"id": dataset_id} if dataset_id else {})},
        "built_on": machine_info(None),
        "files": {name: sha256_file(out / name) for name in files},
    }
    atomic_write_json(out / MANIFEST, manifest)
    size = sum((out / n).stat().st_size for n in (*files, MANIFEST))
    echo(f"golden set: {len(held)} held-out images ({form}), {size / 1e6:.2f} MB")
    return {"images": len(held), "stored": form, "labelled": labels is not None, "bytes": size}
