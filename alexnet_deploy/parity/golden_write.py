"""Writing a golden set (the layout ``parity/golden.py`` reads): the held-out sample, the gates, the files and
their sha256 manifest. Used by the deployment folder's ``golden/`` (``deploy/golden.py``, PyTorch outputs) and
by a Keras import's reference (``parity/keras_reference.py``, Keras' own outputs); each supplies its reference
outputs and the manifest fields that say where they came from."""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import DatasetError
from alexnet_deploy.parity.golden import GATES, GOLDEN_SCHEMA, LABELS, MANIFEST, REFERENCE

SEED = 0  # the held-out sample: class-balanced, deterministic (the parity step draws its set the same way)


def gates_for(overrides: dict | None) -> dict[str, dict]:
    """The parity gates per precision (``parity/tolerances.py`` with the deployment's ``--tol`` overrides)."""
    from alexnet_deploy.parity.tolerances import TOLERANCES, tolerances_for

    return {p: tolerances_for(p, overrides).as_dict() for p in TOLERANCES}


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def heldout_pixels(dataset: str, num_images: int, prep, class_names) -> tuple[np.ndarray, list | None, dict]:
    """``num_images`` class-balanced held-out images of ``dataset`` as the model's uint8 pixels (resize + crop),
    their labels in the model's class order (None when the classes differ), and the manifest's dataset record."""
    from alexnet_deploy.data.datasets import balanced_subset, labels_for_model, load_dataset
    from alexnet_deploy.runtime.preprocess import model_pixels

    held = balanced_subset(load_dataset(dataset, "heldout"), num_images, SEED)
    if len(held) == 0:
        raise DatasetError(f"{dataset} has no held-out images for the golden set")
    pixels = np.stack([model_pixels(held.image(i), prep) for i in range(len(held))])
    return pixels, labels_for_model(held, list(class_names)), {"spec": dataset, "subset": held.name, "seed": SEED}


def write_golden_files(out: Path, inputs_name: str, inputs: np.ndarray, reference: np.ndarray, labels,
                       tolerances: dict | None, manifest: dict) -> tuple[dict, int]:
    """Write inputs, reference outputs, labels (when known) and gates into ``out``, then the manifest: the
    fields every golden set has (schema, date, count, file names, sha256 of each file) over ``manifest``, which
    says what the inputs are, where the reference came from and on what data. Returns (manifest, bytes)."""
    from alexnet_deploy.fileio import atomic_write_bytes, atomic_write_json, sha256_file

    files = {inputs_name: npy_bytes(inputs), REFERENCE: npy_bytes(np.asarray(reference, dtype=np.float32))}
    if labels is not None:
        files[LABELS] = npy_bytes(np.asarray(labels, dtype=np.int64))
    files[GATES] = (json.dumps(gates_for(tolerances), indent=2) + "\n").encode()
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    full = {"schema": GOLDEN_SCHEMA, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images": len(inputs), **manifest, "labels": LABELS if labels is not None else None, "gates": GATES}
    full["reference"] = {"file": REFERENCE, **manifest.get("reference", {})}
    full["files"] = {name: sha256_file(out / name) for name in files}
    atomic_write_json(out / MANIFEST, full)
    return full, sum((out / n).stat().st_size for n in (*files, MANIFEST))
