"""jetson-inference export: an ONNX model ``imageNet`` (imagenet / imagenet.py) runs as it is.

What imageNet does with an ONNX model (dusty-nv/jetson-inference, c/imageNet.cpp ``preProcess`` and
c/tensorConvert.cu ``gpuTensorNormMean``): the whole frame is resampled to the network size by nearest
neighbour (source pixel ``floor(x * in_w / out_w)``, no crop, no aspect ratio kept), then each RGB value ``p``
becomes ``((p * (1/255) + 0) - mean) / std`` with ImageNet's mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225), whatever the model was trained with; the output is read as confidences (``--threshold``
0.01 by default), not passed through a softmax. So the export

- corrects the normalization in the graph when the model's constants differ (Mul/Add undo ImageNet's, then
  Sub/Div apply the model's), so the network sees what it was trained on;
- ends in softmax (as jetson-inference's own onnx_export.py adds), named ``output_0``; the input is ``input_0``
  (the names its tutorials pass with --input_blob / --output_blob; imageNet's built-in defaults are data / prob);
- has a static batch of 1 (jetson-inference builds its engine without optimization profiles).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.exporter.derived import (
    Source,
    check_labels,
    finish,
    load_source,
    output_paths,
    safe_stem,
    verify,
)
from alexnet_deploy.fileio import atomic_path, atomic_write_bytes
from alexnet_deploy.models.specs import IMAGENET_MEAN, IMAGENET_STD
from alexnet_deploy.parity.compare import ParityReport

INPUT_NAME, OUTPUT_NAME = "input_0", "output_0"
# imageNet's ONNX preprocessing constants (c/imageNet.cpp): range (0, 1), then ImageNet mean / std
PIXEL_RANGE = (0.0, 1.0)
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
LABELS = "labels.txt"
MAX_LABEL_BYTES = 510  # tensorNet::LoadClassLabels reads lines with fgets(str, 512, f)


@dataclass
class JetsonInferenceExport:
    dir: Path
    files: dict[str, Path]
    commands: list[str]
    report: ParityReport | None
    notes: list[str] = field(default_factory=list)


def imagenet_resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """imageNet's resampling of an RGB frame (H, W, 3) to (height, width, 3): nearest neighbour with
    ``dx = (int)((float)x * scale.x)``, ``scale.x = (float)in_w / (float)out_w`` (float32, as the CUDA kernel)."""
    in_h, in_w = frame.shape[:2]
    sx, sy = np.float32(in_w) / np.float32(width), np.float32(in_h) / np.float32(height)
    xs = (np.arange(width, dtype=np.float32) * sx).astype(np.int64)
    ys = (np.arange(height, dtype=np.float32) * sy).astype(np.int64)
    return frame[ys[:, None], xs[None, :]]


def imagenet_normalize(pixels: np.ndarray) -> np.ndarray:
    """imageNet's normalization of RGB pixels (N, H, W, 3) -> planar float32 (N, 3, H, W), in float32 as
    ``((p * multiplier + range.x) - mean) / std`` with ``multiplier = (range.y - range.x) / 255.0f``."""
    lo, hi = np.float32(PIXEL_RANGE[0]), np.float32(PIXEL_RANGE[1])
    multiplier = (hi - lo) / np.float32(255.0)
    p = np.asarray(pixels, dtype=np.uint8).astype(np.float32)
    y = ((p * multiplier + lo) - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32)


def imagenet_preprocess(frames, width: int, height: int) -> np.ndarray:
    """Frames (any size, RGB uint8 (H, W, 3)) -> the tensor imageNet feeds an ONNX model."""
    return imagenet_normalize(np.stack([imagenet_resize(np.asarray(f, dtype=np.uint8), width, height) for f in frames]))


def jetson_graph(source: Source):
    """Source model -> (ONNX for imageNet: input_0 normalized with ImageNet's constants, output_0 softmax,
    batch 1; its metadata, whose preprocessing now names ImageNet's constants)."""
    from alexnet_deploy.exporter.input_format import (
        correct_normalization,
        probabilities_output,
        set_static_batch,
        strip_pixel_input,
    )

    model, meta = strip_pixel_input(source.model, source.meta)
    model, meta = correct_normalization(model, meta, MEAN, STD, input_name=INPUT_NAME)
    model, meta = probabilities_output(model, meta, OUTPUT_NAME)
    model, meta = set_static_batch(model, meta, 1)
    corrected = tuple(source.meta.preprocessing.mean) != tuple(MEAN) or tuple(source.meta.preprocessing.std) != tuple(STD)
    extra = {**meta.extra, "target": "jetson-inference", "derived_from_sha256": source.sha256,
             "normalization_corrected_from": ({"mean": list(source.meta.preprocessing.mean),
                                               "std": list(source.meta.preprocessing.std)} if corrected else None)}
    return model, replace(meta, extra=extra), corrected


def commands(onnx_name: str, labels: str = LABELS) -> list[str]:
    """The imagenet / imagenet.py command lines (as jetson-inference's docs write them) for this export."""
    args = (f"--model={shlex.quote(onnx_name)} --labels={shlex.quote(labels)} "
            f"--input_blob={INPUT_NAME} --output_blob={OUTPUT_NAME}")
    return [f"imagenet {args} input.jpg output.jpg", f"imagenet.py {args} input.jpg output.jpg",
            f"imagenet.py {args} csi://0"]


def export_jetson_inference(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                            check: bool = True) -> JetsonInferenceExport:
    source = load_source(model_path)
    meta = source.meta
    if meta.batch not in (None, 1):
        raise UserInputError(f"{source.path.name} has a static batch of {meta.batch}; jetson-inference runs batch 1: "
                             "export the ONNX with a dynamic batch or --batch 1")
    check_labels(meta.class_names, "", "jetson-inference", MAX_LABEL_BYTES)
    for i, n in enumerate(meta.class_names):  # LoadClassLabels splits "nXXXXXXXX description" lines
        if len(n) > 9 and n[0] == "n" and n[9] == " " and not n[1:9].isdigit():
            raise UserInputError(f"class {i} name {n!r} would be read by jetson-inference as synset {n[:9]!r} + "
                                 f"label {n[10:]!r}; rename the class")
    onnx_name = safe_stem(source.path) + "_jetson.onnx"
    paths = output_paths(out_dir, source.path, {"the ONNX model": onnx_name, "the label file": LABELS})
    model, jmeta, corrected = jetson_graph(source)
    data = finish(model, jmeta)
    report = None
    with atomic_path(paths["the ONNX model"]) as tmp:
        tmp.write_bytes(data)
        if check:
            report = verify(source, tmp, jmeta, imagenet_normalize, "jetson-inference")
    atomic_write_bytes(paths["the label file"], ("\n".join(meta.class_names) + "\n").encode())
    notes = []
    if corrected:
        notes.append(f"the model was trained with mean {tuple(meta.preprocessing.mean)} / std "
                     f"{tuple(meta.preprocessing.std)}; the graph undoes imageNet's ImageNet normalization and "
                     "applies these")
    if meta.precision == "int8":
        notes.append("an INT8 QDQ model needs a TensorRT that builds explicit-quantization networks (JetPack 6+)")
    return JetsonInferenceExport(Path(out_dir), paths, commands(onnx_name), report, notes)
