"""The golden set of a deployment folder (``DIR/golden/``): held-out inputs, their labels, the PyTorch FP32
reference outputs and the parity gates per precision, with the sha256 of every file in ``manifest.json``.

``alexnet-deploy`` writes it on the build host (``deploy/golden.py``, which needs torch and the dataset); this
module reads it and gates a model against it on the target with numpy and the runtime only (no torch, no
dataset): ``alexnet-verify`` and ``alexnet-parity --golden``. Polygraphy's ``--save-inputs``/``--load-outputs``
is the anchor; here the labels (accuracy) and the gates travel with the data.

Inputs are stored in one of two forms (``manifest["inputs"]["stored"]``):

- ``model-input``: exactly the array the model takes (normalized float32 NCHW), when it is small (the 32x32
  variant: ~1 MB per 100 images). Nothing is computed on the target before inference.
- ``pixels``: uint8 RGB pixels (N, crop, crop, 3) after the build host's resize + center crop (Pillow), for
  the 224/227 variants where float tensors would be 4x larger (~150 KB per image instead of ~600 KB). The
  target turns them into the model's input with ``runtime.preprocess.pixels_as_input``: the same numpy
  normalization the runtime uses everywhere, so a raw-pixel (uint8 NHWC) model takes them as they are.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.models.specs import Preprocessing
from alexnet_deploy.parity.compare import ParityReport, compare_outputs
from alexnet_deploy.parity.tolerances import TOLERANCES, Tolerances

GOLDEN_SCHEMA = "alexnet-deploy.golden/1"
GOLDEN_DIR = "golden"  # inside a deployment folder
MANIFEST = "manifest.json"
INPUTS, PIXELS, LABELS, REFERENCE, GATES = "inputs.npy", "pixels.npy", "labels.npy", "reference_outputs.npy", "gates.json"
STORED_FORMS = ("model-input", "pixels")
# Store the model's own float input when the whole set stays under this; otherwise uint8 pixels (1/4 the size)
FLOAT_INPUTS_MAX_BYTES = 8 << 20
SET_NAME = "golden"  # the ParityReport set name


class GoldenIntegrityError(AlexnetDeployError):
    """A golden file or a model does not match the sha256 recorded for it: a failing verify, never a pass."""

    exit_code = 1


def _corrupt(path: Path, why: str) -> UserInputError:
    return UserInputError(f"{path} is corrupt: {why}; re-run alexnet-deploy to write the golden set again")


@dataclass
class GoldenSet:
    path: Path
    manifest: dict
    inputs: np.ndarray  # model-input float32 (N, 3, H, W) or pixels uint8 (N, H, W, 3)
    stored: str
    reference: np.ndarray  # (N, num_classes) float32: the PyTorch FP32 outputs
    labels: np.ndarray | None  # model class indices, None when the model's classes are unnamed
    gates: dict[str, dict]  # precision -> Tolerances fields
    preprocessing: Preprocessing
    class_names: list[str]
    output_kind: str = "logits"
    input_format: str = "float-nchw"  # the format of ``inputs`` when stored == "model-input"
    files: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reference)

    def describe(self) -> str:
        return (f"{self.path} ({len(self)} images, {self.stored}"
                f"{'' if self.labels is not None else ', no labels'})")

    def tolerances(self, precision: str, overrides: dict | None = None) -> Tolerances:
        """The gates the golden set carries for ``precision`` (then ``overrides``)."""
        if precision not in self.gates:
            raise UserInputError(f"{self.path / GATES} has no gates for precision {precision!r} "
                                 f"(it has {', '.join(self.gates) or 'none'})")
        base = Tolerances().override({k: v for k, v in self.gates[precision].items()})
        return base.override(overrides or {})

    def problems(self, meta) -> list[str]:
        """Why ``meta``'s model cannot be compared with this set (empty: it can)."""
        out = []
        if list(meta.class_names) != list(self.class_names):
            if len(meta.class_names) != len(self.class_names):
                out.append(f"the model has {len(meta.class_names)} classes, the golden set {len(self.class_names)}")
            else:
                out.append("the model's class names differ from the golden set's")
        p, g = meta.preprocessing, self.preprocessing
        if p.crop != g.crop:
            out.append(f"the model takes {p.crop}x{p.crop} inputs, the golden set holds {g.crop}x{g.crop}")
        elif not (np.allclose(p.mean, g.mean, rtol=0, atol=1e-7) and np.allclose(p.std, g.std, rtol=0, atol=1e-7)):
            out.append(f"the model normalizes with mean {list(p.mean)} / std {list(p.std)}, the golden set's reference "
                       f"with {list(g.mean)} / {list(g.std)}")
        if self.stored == "model-input" and meta.input_format != self.input_format:
            out.append(f"the golden set stores {self.input_format} inputs but the model takes {meta.input_format}")
        return out

    def model_inputs(self, meta) -> np.ndarray:
        """The golden inputs as ``meta``'s model takes them (check :meth:`problems` first)."""
        if self.stored == "model-input":
            return self.inputs
        from alexnet_deploy.runtime.preprocess import pixels_as_input

        return pixels_as_input(self.inputs, meta.input_format, meta.preprocessing)

    def summary(self) -> dict:
        m = self.manifest
        return {"path": str(self.path), "images": len(self), "stored": self.stored, "labelled": self.labels is not None,
                "dataset": m.get("dataset"), "reference": m.get("reference"), "created_utc": m.get("created_utc"),
                "manifest_sha256": sha256_file(self.path / MANIFEST)}


def find_golden(path: str | Path) -> Path:
    """``path`` itself when it is a golden folder, else ``path/golden`` (one line when there is none)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} not found")
    if (path / MANIFEST).is_file() and _schema(path / MANIFEST) == GOLDEN_SCHEMA:
        return path
    if (path / GOLDEN_DIR).is_dir():
        return path / GOLDEN_DIR
    raise UserInputError(f"{path} has no golden set ({GOLDEN_DIR}/{MANIFEST}); deployment folders written by "
                         "alexnet-deploy carry one: deploy again to add it")


def _schema(path: Path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("schema") if isinstance(data, dict) else None


def read_manifest(folder: Path) -> dict:
    p = folder / MANIFEST
    if not p.is_file():
        raise UserInputError(f"{folder} has no {MANIFEST}: not a golden set (or an incomplete copy of one)")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(p, f"not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or data.get("schema") != GOLDEN_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserInputError(f"{p} is not a golden-set manifest (schema {got!r}, expected {GOLDEN_SCHEMA!r}); "
                             "it may come from a newer or older alexnet-deploy")
    if not isinstance(data.get("files"), dict) or not data["files"]:
        raise _corrupt(p, "it lists no files with their sha256")
    return data


def check_files(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists is there with its recorded sha256 (:class:`GoldenIntegrityError` if not)."""
    for rel, sha in manifest["files"].items():
        p = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise _corrupt(folder / MANIFEST, f"file name {rel!r} points outside the golden folder")
        if not p.is_file():
            raise GoldenIntegrityError(f"{p} is missing (listed in {folder / MANIFEST}); the golden set is incomplete")
        if sha256_file(p) != sha:
            raise GoldenIntegrityError(f"{p} does not match the sha256 in {folder / MANIFEST} (changed or tampered "
                                       "with since alexnet-deploy wrote it); nothing is verified against it")


def _load_array(path: Path, dtype: str, ndim: int) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _corrupt(path, f"not a .npy array ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
        raise _corrupt(path, f"expected a {ndim}-d {dtype} array, got {getattr(arr, 'dtype', '?')} "
                             f"shape {getattr(arr, 'shape', '?')}")
    return arr


def load_golden(path: str | Path) -> GoldenSet:
    """Read and check a golden set: ``path`` is the golden folder or the deployment folder holding it."""
    folder = find_golden(path)
    m = read_manifest(folder)
    check_files(folder, m)
    try:
        inp = m["inputs"]
        stored = inp["stored"]
        if stored not in STORED_FORMS:
            raise ValueError(f"inputs.stored {stored!r} is not one of {', '.join(STORED_FORMS)}")
        prep = Preprocessing.from_dict(m["preprocessing"])
        class_names = [str(c) for c in m["class_names"]]
        ref_name, labels_name = m["reference"]["file"], m.get("labels")
        gates_name = m["gates"]
        for rel in (inp["file"], ref_name, gates_name, *([labels_name] if labels_name else [])):
            if rel not in m["files"]:
                raise ValueError(f"{rel} has no sha256 in the manifest")
    except (KeyError, TypeError, ValueError, UserInputError) as exc:
        raise _corrupt(folder / MANIFEST, f"missing or malformed field ({exc})") from None
    inputs = _load_array(folder / inp["file"], "float32" if stored == "model-input" else "uint8", 4)
    reference = _load_array(folder / ref_name, "float32", 2)
    labels = _load_array(folder / labels_name, "int64", 1) if labels_name else None
    n = len(reference)
    c = prep.crop
    want = (n, 3, c, c) if stored == "model-input" else (n, c, c, 3)
    if inputs.shape != want:
        raise _corrupt(folder / inp["file"], f"shape {inputs.shape}, the manifest describes {want}")
    if reference.shape[1] != len(class_names) or (labels is not None and labels.shape != (n,)):
        raise _corrupt(folder / MANIFEST, f"{len(class_names)} classes and {n} images do not match the arrays "
                                          f"(reference {reference.shape}, labels {None if labels is None else labels.shape})")
    try:
        gates = json.loads((folder / gates_name).read_text())
        if not isinstance(gates, dict) or not all(isinstance(v, dict) for v in gates.values()):
            raise ValueError("expected {precision: {gate: value}}")
        for g in gates.values():
            Tolerances().override(g)
    except (OSError, ValueError, UserInputError) as exc:
        raise _corrupt(folder / gates_name, str(exc).splitlines()[0][:160]) from None
    return GoldenSet(folder, m, inputs, stored, reference, labels, gates, prep, class_names,
                     output_kind=str(m["reference"].get("output_kind", "logits")),
                     input_format=str(inp.get("input_format", "float-nchw")), files=dict(m["files"]))


def compare_with_golden(runner, golden: GoldenSet, precision: str | None = None, overrides: dict | None = None,
                        batch_size: int = 32) -> ParityReport:
    """Run an activated ``runner`` on the golden inputs and gate its outputs against the reference outputs,
    labels and gates the set carries (``precision``: whose gates; default the model's own)."""
    meta = runner.metadata
    prec = precision or meta.precision
    if prec not in TOLERANCES:
        raise UserInputError(f"unknown precision {prec!r}; choose one of {', '.join(TOLERANCES)}")
    tol = golden.tolerances(prec, overrides)
    report = ParityReport(runner.describe(), f"golden PyTorch FP32 outputs ({golden.path})", prec, tol)
    problems = golden.problems(meta)
    if problems:
        from alexnet_deploy.parity.compare import SetResult

        report.sets.append(SetResult(SET_NAME, len(golden), {}, [f"not comparable: {p}" for p in problems]))
        return report
    cand = runner.infer_batches(golden.model_inputs(meta), batch_size)
    out_kind = meta.output_kind
    ref = golden.reference
    if out_kind != golden.output_kind:  # a softmax-output export against logits, or the other way round
        from alexnet_deploy.runtime.postprocess import to_probabilities

        ref = to_probabilities(ref, golden.output_kind).astype(np.float32) if out_kind == "probabilities" else ref
        if out_kind == "logits":
            report.sets.append(_mismatch(len(golden), "the model outputs logits, the golden set probabilities"))
            return report
    report.sets.append(compare_outputs(SET_NAME, ref, cand, tol, golden.labels, out_kind))
    return report


def _mismatch(n: int, why: str):
    from alexnet_deploy.parity.compare import SetResult

    return SetResult(SET_NAME, n, {}, [f"not comparable: {why}"])


def finite_or_none(v):
    return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v
