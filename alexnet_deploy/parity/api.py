"""Library entry points for parity gates (what ``alexnet-parity`` runs), for use in a user's own CI:

    from alexnet_deploy.parity.api import assert_parity

    def test_exported_model_matches_pytorch():
        assert_parity("model.onnx", dataset="digits", min_top1_agreement=0.995)
"""
from __future__ import annotations

from alexnet_deploy.errors import ParityError
from alexnet_deploy.parity.compare import ParityReport


def check_parity(candidate, *, engine: str | None = None, reference: str | None = None,
                 variant: str | None = None, dataset: str | None = "auto", num_images: int = 360,
                 random_samples: int = 16, precision: str = "auto", rebuild_if_stale: bool = False,
                 rebuild=None, preprocess: str = "default", **tolerances) -> ParityReport:
    """Run ``candidate`` (ONNX, engine or checkpoint) and its PyTorch FP32 reference; return the report.

    ``rebuild_if_stale`` with ``rebuild``: a stale TensorRT engine is rebuilt by that builder first
    (``alexnet_deploy.exporter.rebuild.rebuild_engine``; see ``runtime/runners/tensorrt.py``).

    ``dataset``: ``auto`` (the training dataset recorded in the model, or digits for digit / unnamed classes),
    a dataset spec, or None / ``none`` (random inputs only)."""
    from alexnet_deploy.fileio import printable_path
    from alexnet_deploy.parity.run import reference_for, run_parity
    from alexnet_deploy.parity.sets import parity_sets
    from alexnet_deploy.parity.tolerances import tolerances_for
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.runtime.runners.torch_runner import TorchRunner
    from alexnet_deploy.runtime.trt_library import source_onnx_path

    runner = open_runner(candidate, engine, variant=variant, rebuild_if_stale=rebuild_if_stale, rebuild=rebuild)
    meta = runner.metadata
    prec = meta.precision if precision == "auto" else precision
    tol = tolerances_for(prec, tolerances)
    manifest = getattr(runner, "manifest", None) or {}
    source_onnx = source_onnx_path(manifest, candidate) if manifest else None
    ref = TorchRunner(reference_for(meta, reference, candidate, source_onnx or manifest.get("source_onnx")))
    # preprocess="stretch": the dataset once more, resized without the crop (DeepStream, jetson-inference)
    sets = parity_sets(meta, dataset, num_images, random_samples, resize=preprocess)
    with runner, ref:
        report = run_parity(runner, ref, sets, tol, prec)
    report.candidate = f"{printable_path(candidate)} [{runner.describe()}]"
    from alexnet_deploy.runtime.machine import machine_info

    report.machine = machine_info(None)  # the figures name the machine they were measured on
    return report


def assert_parity(candidate, **kwargs) -> ParityReport:
    """:func:`check_parity`, raising :class:`ParityError` (with the table) when any gate fails."""
    report = check_parity(candidate, **kwargs)
    if not report.passed:
        raise ParityError(f"parity gate failed for {candidate}:\n{report.table()}", report)
    return report
