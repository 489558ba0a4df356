"""Run a candidate runner and the PyTorch FP32 reference over input sets and gate the result."""
from __future__ import annotations

import os
import re

from alexnet_deploy.errors import ModelLoadError
from alexnet_deploy.parity.compare import ParityReport, compare_outputs
from alexnet_deploy.parity.tolerances import Tolerances
from alexnet_deploy.runtime.metadata import ModelMetadata

_RANDOM = re.compile(r"^random\(seed=(-?\d+)\)$")


def reference_for(meta: ModelMetadata, reference: str | None = None):
    """The PyTorch FP32 reference of a candidate: ``reference`` if given, otherwise the weights recorded in
    its metadata (a seeded random init is rebuilt; a file must still exist and match its sha256)."""
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
    if not source or not os.path.isfile(source):
        raise ModelLoadError(
            f"the reference weights {source!r} recorded in the model are not here; pass --reference CHECKPOINT"
        )
    loaded = load_model(meta.variant, source)
    if reference is None and meta.source_sha256 and loaded.source_sha256 != meta.source_sha256:
        raise ModelLoadError(
            f"{source} changed since export (sha256 differs); pass --reference with the original weights"
        )
    return loaded


def run_parity(candidate, reference_runner, sets, tol: Tolerances, precision: str,
               batch_size: int = 32) -> ParityReport:
    """``sets``: iterable of (name, inputs (N,3,H,W) float32, labels or None)."""
    report = ParityReport(candidate.describe(), reference_runner.describe(), precision, tol)
    for name, x, labels in sets:
        ref = reference_runner.infer_batches(x, batch_size)
        cand = candidate.infer_batches(x, batch_size)
        report.sets.append(compare_outputs(name, ref, cand, tol, labels, candidate.metadata.output_kind))
    return report
