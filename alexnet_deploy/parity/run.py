"""Run a candidate runner and the PyTorch FP32 reference over input sets and gate the result."""
from __future__ import annotations

import os
import re

from alexnet_deploy.errors import ModelLoadError
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.parity.compare import ParityReport, compare_outputs
from alexnet_deploy.parity.tolerances import Tolerances
from alexnet_deploy.runtime.metadata import ModelMetadata

_RANDOM = re.compile(r"^random\(seed=(-?\d+)\)$")


def reference_for(meta: ModelMetadata, reference: str | None = None, model_path=None, source_onnx=None):
    """The PyTorch FP32 reference of a candidate: ``reference`` if given, otherwise the weights recorded in
    its metadata (a seeded random init is rebuilt). A recorded file is looked for relative to the model file
    (``model_path``, and for an engine its ``source_onnx``), then at its recorded absolute path, then as
    written; the first whose sha256 matches the recorded one is used."""
    from alexnet_deploy.models.weights import load_model

    n = meta.num_classes
    softmax = meta.output_kind == "probabilities"
    source = reference or meta.source_weights
    m = _RANDOM.match(source or "")
    if source == "random" or m:
        seed = int(m.group(1)) if m else 0
        return load_model(meta.variant, "random", num_classes=n, seed=seed, softmax=softmax,
                          class_names=meta.class_names)
    if source == "imagenet":
        return load_model(meta.variant, "imagenet")
    if reference is not None:
        return load_model(meta.variant, reference)
    found = [p for p in _candidate_paths(meta, model_path, source_onnx) if os.path.isfile(p)]
    if not found:
        raise ModelLoadError(
            f"the reference weights {source!r} recorded in the model are not here; pass --reference CHECKPOINT"
        )
    for path in found:
        if not meta.source_sha256 or sha256_file(path) == meta.source_sha256:
            return load_model(meta.variant, path)
    raise ModelLoadError(
        f"{found[0]} changed since export (sha256 differs); pass --reference with the original weights"
    )


def _candidate_paths(meta: ModelMetadata, model_path, source_onnx) -> list[str]:
    source = meta.source_weights
    out = []
    if source and not os.path.isabs(source):
        out += [os.path.join(os.path.dirname(os.path.realpath(p)), source) for p in (model_path, source_onnx) if p]
    out += [p for p in (meta.extra.get("source_weights_absolute"), source) if p]
    return list(dict.fromkeys(out))


def run_parity(candidate, reference_runner, sets, tol: Tolerances, precision: str,
               batch_size: int = 32) -> ParityReport:
    """``sets``: iterable of (name, inputs (N,3,H,W) float32, labels or None[, candidate inputs]); the optional
    fourth item is what a raw-pixel candidate takes for the same images (the reference gets the normalized ones)."""
    report = ParityReport(candidate.describe(), reference_runner.describe(), precision, tol)
    for name, x, labels, *cand_x in sets:
        ref = reference_runner.infer_batches(x, batch_size)
        cand = candidate.infer_batches(cand_x[0] if cand_x else x, batch_size)
        report.sets.append(compare_outputs(name, ref, cand, tol, labels, candidate.metadata.output_kind))
    return report
