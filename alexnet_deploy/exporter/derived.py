"""Exports derived from an exported ONNX model for other stacks (DeepStream, jetson-inference): read the source
and its metadata, refuse unsafe output folders, check the derived graph against the source on ONNX Runtime
before anything is written. Needs onnx and onnxruntime, not torch (works next to JetPack's TensorRT)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from alexnet_deploy.errors import ModelLoadError, ParityError, UserInputError
from alexnet_deploy.fileio import check_writable, printable_path, refuse_overlapping_paths, sha256_bytes
from alexnet_deploy.parity.compare import ParityReport, compare_outputs
from alexnet_deploy.parity.tolerances import tolerances_for
from alexnet_deploy.runtime.metadata import ModelMetadata, set_metadata
from alexnet_deploy.runtime.postprocess import to_probabilities
from alexnet_deploy.runtime.preprocess import pixels_as_input

VERIFY_IMAGES = 32  # seeded random pixel images the derived graph is checked on (besides structured ones)


@dataclass
class Source:
    path: Path
    model: onnx.ModelProto
    meta: ModelMetadata
    sha256: str


def load_source(path: str | os.PathLike) -> Source:
    """An ONNX model written by ``alexnet-export onnx`` / ``alexnet-calibrate`` (its metadata is needed)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise UserInputError(f"{printable_path(path)} is not an ONNX model (.onnx); export one with alexnet-export onnx")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"model not found: {printable_path(path)}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{printable_path(path)} is a folder, not an ONNX model") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {printable_path(path)}: {exc.strerror}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ModelLoadError(f"{printable_path(path)} is not a readable ONNX model: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, printable_path(path))
    from alexnet_deploy.calibration.placement import require_tensorrt_qdq

    require_tensorrt_qdq(model, printable_path(path))  # both stacks parse the model with TensorRT
    return Source(path, model, meta, sha256_bytes(data))


def output_paths(out_dir: str | os.PathLike, source: Path, names: dict[str, str]) -> dict[str, Path]:
    """``{label: file name}`` -> paths in ``out_dir``, after refusing a folder that holds the input model, an
    output that is the input, and two outputs on one path. Creates ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"--dir {printable_path(out_dir)} is a file; give a folder")
    if out_dir.exists() and os.path.realpath(out_dir) == os.path.realpath(source.parent):
        raise UserInputError(f"--dir {printable_path(out_dir)} holds the input model {source.name}; "
                             "write the export into its own folder")
    for label, name in names.items():
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise UserInputError(f"{label} {name!r} is not a plain file name")
    paths = {label: out_dir / name for label, name in names.items()}
    refuse_overlapping_paths(inputs={"the model": source}, outputs=paths)
    check_writable(next(iter(paths.values())))
    return paths


def safe_stem(path: Path) -> str:
    """A file-name stem that config files and shell command lines carry verbatim ([A-Za-z0-9._-] only)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".")
    return stem or "model"


def check_labels(names: list[str], forbidden: str, stack: str, max_bytes: int | None = None) -> None:
    """Class names the stack's label file can carry unchanged; one line naming the first bad one otherwise."""
    for i, n in enumerate(names):
        bad = [c for c in forbidden if c in n] + [c for c in n if ord(c) < 32 or c == "\x7f"]
        if bad:
            raise UserInputError(f"class {i} name {n!r} contains {bad[0]!r}, which {stack}'s label file cannot hold; "
                                 "rename the classes (train or export with other class names)")
        if max_bytes is not None and len(n.encode()) > max_bytes:
            raise UserInputError(f"class {i} name is {len(n.encode())} bytes long; {stack} reads at most {max_bytes}")


def verify(source: Source, derived_path: Path, derived_meta: ModelMetadata,
           feed: Callable[[np.ndarray], np.ndarray], name: str) -> ParityReport:
    """The derived graph fed as its stack feeds it (``feed``: uint8 pixels (N, H, W, 3) at the input size ->
    its input) vs the source fed as alexnet-deploy feeds it, both as probabilities, on seeded random pixels and
    smooth gradients; gated with the source precision's tolerances. Raises ParityError on a failure."""
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    c = source.meta.preprocessing.crop
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (VERIFY_IMAGES, c, c, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, c, dtype=np.float32)
    smooth = np.stack([np.stack([np.add.outer(ramp * a, ramp * (1 - a)), np.tile(ramp, (c, 1)) * a,
                                 np.full((c, c), 255.0 * a)], -1).clip(0, 255).astype(np.uint8)
                       for a in np.linspace(0, 1, 8)])
    tol = tolerances_for(source.meta.precision)
    report = ParityReport(name, f"{source.path.name} (ONNX Runtime CPU)", source.meta.precision, tol)
    with OrtRunner(source.path, source.meta) as src, OrtRunner(derived_path, derived_meta) as dst:
        for set_name, px in (("random pixels", noise), ("gradients", smooth)):
            ref = to_probabilities(src.infer_batches(pixels_as_input(px, source.meta.input_format,
                                                                     source.meta.preprocessing)),
                                   source.meta.output_kind)
            out = to_probabilities(dst.infer_batches(feed(px)), derived_meta.output_kind)
            report.sets.append(compare_outputs(set_name, ref, out, tol, None, "probabilities"))
    if not report.passed:
        raise ParityError(f"the {name} export disagrees with {source.path.name}; nothing was written:\n"
                          f"{report.table()}", report)
    return report


def finish(model: onnx.ModelProto, meta: ModelMetadata) -> bytes:
    from alexnet_deploy.exporter.input_format import check

    set_metadata(model, meta)
    check(model, "derived model")
    return model.SerializeToString()
