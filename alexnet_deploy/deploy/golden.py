"""Write a deployment folder's golden set (build host: torch and the dataset are here; the reader,
``parity/golden.py``, needs neither). See that module for the layout and the two forms inputs are stored in."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet_deploy.parity.golden import FLOAT_INPUTS_MAX_BYTES, INPUTS, PIXELS
from alexnet_deploy.parity.golden_write import SEED, gates_for, heldout_pixels, write_golden_files  # noqa: F401


def stored_form(n: int, crop: int, input_format: str) -> str:
    """``model-input`` when the model takes normalized floats and they fit in FLOAT_INPUTS_MAX_BYTES, or when
    the model takes uint8 pixels (then they are its input); ``pixels`` otherwise (the 224/227 variants)."""
    if input_format == "uint8-nhwc":
        return "pixels"
    if input_format == "float-nchw" and n * 3 * crop * crop * 4 <= FLOAT_INPUTS_MAX_BYTES:
        return "model-input"
    return "pixels"


def write_golden(loaded, dataset: str, num_images: int, out: Path, *, tolerances: dict | None = None,
                 dataset_id: dict | None = None, input_format: str = "float-nchw", echo=print) -> dict:
    """Held-out images of ``dataset`` -> ``out/`` (inputs, labels, PyTorch FP32 outputs of ``loaded``, gates,
    manifest.json with each file's sha256). Returns a summary for the provenance record."""
    import torch

    from alexnet_deploy.runtime.machine import machine_info
    from alexnet_deploy.runtime.preprocess import normalize_pixels, pixels_as_input
    from alexnet_deploy.runtime.runners.torch_runner import TorchRunner

    prep = loaded.preprocessing
    pixels, labels, ds = heldout_pixels(dataset, num_images, prep, loaded.class_names)
    x = normalize_pixels(pixels, prep)  # exactly what the parity step's reference sees (ImageDataset.arrays)
    with TorchRunner(loaded) as ref_runner:
        reference = ref_runner.infer_batches(x, 64).astype(np.float32)
    form = stored_form(len(pixels), prep.crop, input_format)
    if form == "model-input":
        inputs_name, arr = INPUTS, pixels_as_input(pixels, input_format, prep)
    else:
        inputs_name, arr = PIXELS, pixels
    manifest = {
        "inputs": {"file": inputs_name, "stored": form, "dtype": str(arr.dtype), "shape": list(arr.shape),
                   "input_format": input_format if form == "model-input" else "uint8-nhwc pixels",
                   "how": ("the model's input as the runtime feeds it (normalized float32 NCHW)" if form == "model-input"
                           else "uint8 RGB pixels after resize + center crop on the build host (Pillow); the target "
                                "normalizes them with runtime.preprocess.pixels_as_input")},
        "preprocessing": prep.to_dict(),
        "class_names": list(loaded.class_names),
        "reference": {"output_kind": "probabilities" if loaded.softmax else "logits",
                      "engine": "torch (PyTorch eager, FP32, CPU)", "variant": loaded.variant,
                      "weights_sha256": loaded.source_sha256, "torch": torch.__version__},
        "dataset": {**ds, **({"id": dataset_id} if dataset_id else {})},
        "built_on": machine_info(None),
    }
    _, size = write_golden_files(out, inputs_name, arr, reference, labels, tolerances, manifest)
    echo(f"golden set: {len(pixels)} held-out images ({form}), {size / 1e6:.2f} MB")
    return {"images": len(pixels), "stored": form, "labelled": labels is not None, "bytes": size}
