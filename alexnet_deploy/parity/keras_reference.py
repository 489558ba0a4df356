"""Keras' own outputs as the parity reference of an imported Keras model.

Where Keras runs (the machine the model was trained on), ``alexnet-export keras-reference MODEL.keras`` runs
the Keras model itself on held-out images (or seeded random pixels) and writes a golden set
(``parity/golden.py`` layout: uint8 pixels, Keras' outputs, labels, gates, sha256 manifest) next to the model,
``MODEL.keras-reference/``. Everything after that needs no Keras: ``alexnet-export onnx --weights MODEL.keras``
gates the exported ONNX against it before writing (so the reference is Keras, not our port), records it in the
ONNX metadata, and ``alexnet-parity`` / ``alexnet-verify`` style checks run against it on the target.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import ModelLoadError, UserInputError
from alexnet_deploy.parity.golden_write import SEED

REFERENCE_SUFFIX = ".keras-reference"


def default_reference_dir(keras_path) -> Path:
    from alexnet_deploy.models.keras_h5 import _weights_stem

    p = Path(keras_path)
    return p.with_name(_weights_stem(p) + REFERENCE_SUFFIX)


def keras_inputs(pixels: np.ndarray, loaded) -> np.ndarray:
    """uint8 pixels (N, H, W, 3) -> what the Keras model takes: float 0..255 when it normalizes itself
    (Rescaling/Normalization layers), else the normalized floats; channels first or last as it was built."""
    from alexnet_deploy.runtime.preprocess import normalize_pixels

    k = loaded.info.get("keras", {})
    if k.get("preprocessing_layers"):
        x = pixels.astype(np.float32)  # (N, H, W, 3) 0..255
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if k.get("data_format") == "channels_first" else x)
    x = normalize_pixels(pixels, loaded.preprocessing)  # (N, 3, H, W)
    return np.ascontiguousarray(x if k.get("data_format") == "channels_first" else x.transpose(0, 2, 3, 1))


def write_keras_reference(keras_path, out: Path | None = None, *, dataset: str | None = None, num_images: int = 64,
                          loaded=None, tolerances: dict | None = None, echo=print) -> Path:
    """Run the Keras model (needs keras) on ``num_images`` held-out images of ``dataset`` (None: seeded random
    pixels) and write the golden set to ``out`` (default: next to the model). ``loaded``: the import
    (:func:`~alexnet_deploy.models.keras_h5.load_keras_model`, with any --mean/--std applied)."""
    from alexnet_deploy.deps import require
    from alexnet_deploy.parity.golden import PIXELS
    from alexnet_deploy.parity.golden_write import heldout_pixels, write_golden_files

    keras_path = Path(keras_path)
    out = Path(out) if out is not None else default_reference_dir(keras_path)
    if loaded is None:
        from alexnet_deploy.models.keras_h5 import load_keras_model

        loaded = load_keras_model(keras_path)
    if not keras_path.name.lower().endswith((".keras", ".h5")) or loaded.info.get("keras", {}).get("format") == "weights.h5":
        raise UserInputError(f"{keras_path}: Keras' outputs need the whole model (.keras or .h5), not weights only")
    prep = loaded.preprocessing
    labels = None
    if dataset:
        pixels, labels, ds = heldout_pixels(dataset, num_images, prep, loaded.class_names)
    else:
        c = prep.crop
        pixels = np.random.default_rng(SEED).integers(0, 256, (num_images, c, c, 3), dtype=np.uint8)
        ds = {"spec": "random pixels", "seed": SEED}
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras", "running the Keras model for its reference outputs")
    try:
        km = keras.saving.load_model(str(keras_path), compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types
        raise ModelLoadError(f"Keras cannot load {keras_path}: {str(exc).strip().splitlines()[0][:200]}") from None
    ref = np.asarray(km.predict(keras_inputs(pixels, loaded), batch_size=32, verbose=0), dtype=np.float32)
    if ref.shape != (len(pixels), loaded.num_classes):
        raise ModelLoadError(f"Keras' outputs have shape {ref.shape}, expected ({len(pixels)}, {loaded.num_classes})")
    manifest = {
        "inputs": {"file": PIXELS, "stored": "pixels", "dtype": "uint8", "shape": list(pixels.shape),
                   "input_format": "uint8-nhwc pixels",
                   "how": "uint8 RGB pixels after resize + center crop (Pillow); Keras got them "
                          + ("as float 0..255 (its own Rescaling/Normalization)" if loaded.info.get("keras", {}).get(
                              "preprocessing_layers") else "normalized with the preprocessing below")},
        "preprocessing": prep.to_dict(),
        "class_names": list(loaded.class_names),
        "reference": {"output_kind": "probabilities" if loaded.softmax else "logits",
                      "engine": f"keras {keras.__version__} ({keras.backend.backend()} backend), model.predict",
                      "variant": loaded.variant, "weights_sha256": loaded.source_sha256,
                      "keras_file": keras_path.name},
        "dataset": ds,
    }
    manifest, _ = write_golden_files(out, PIXELS, pixels, ref, labels, tolerances, manifest)
    echo(f"Keras reference: {len(pixels)} images, outputs of {manifest['reference']['engine']} -> {out}")
    return out


def find_reference(loaded, given: str | None) -> Path | None:
    """The Keras reference to gate an import against: ``given`` ('none': skip), else the default folder next to
    the Keras file when it exists. Its recorded weights sha256 must be the file's."""
    if given == "none" or "keras" not in loaded.info:
        if given not in (None, "none"):
            raise UserInputError("--keras-reference applies to Keras weights (.keras / .h5 / .weights.h5) only")
        return None
    p = Path(given) if given else default_reference_dir(loaded.source)
    if not p.exists():
        if given:
            raise UserInputError(f"Keras reference not found: {given}")
        return None
    from alexnet_deploy.parity.golden import find_golden, read_manifest

    folder = find_golden(p)
    sha = read_manifest(folder).get("reference", {}).get("weights_sha256")
    if sha and sha != loaded.source_sha256:
        raise UserInputError(f"{folder} holds the outputs of another Keras file (sha256 {sha[:12]}, this one "
                             f"{loaded.source_sha256[:12]}); write it again with alexnet-export keras-reference")
    return folder


def check_against_reference(onnx_path, metadata, folder: Path, name: str):
    """The written ONNX (ONNX Runtime CPU) against Keras' outputs with the FP32 gates the set carries."""
    from alexnet_deploy.parity.golden import compare_with_golden, load_golden
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    golden = load_golden(folder)
    with OrtRunner(onnx_path, metadata) as runner:
        report = compare_with_golden(runner, golden, metadata.precision)
    report.candidate = name
    report.reference = f"Keras' own outputs ({golden.manifest['reference'].get('engine', 'keras')}, {folder.name})"
    return report
