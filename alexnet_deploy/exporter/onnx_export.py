"""PyTorch -> ONNX: torch.onnx export, BatchNorm folding, onnxsim, optional FP16, onnx.checker, metadata,
then a parity check on ONNX Runtime before the file is put in place (atomically)."""
from __future__ import annotations

import io
import logging
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from alexnet_deploy.data.datasets import recorded_dataset
from alexnet_deploy.errors import ExportError, ParityError, UserInputError
from alexnet_deploy.exporter.fp16 import to_fp16  # re-exported; torch-free for alexnet-export trt
from alexnet_deploy.fileio import atomic_path, check_writable, printable_path, sha256_bytes
from alexnet_deploy.models.weights import LoadedModel
from alexnet_deploy.parity.compare import ParityReport
from alexnet_deploy.parity.tolerances import tolerances_for
from alexnet_deploy.runtime.metadata import ModelMetadata, set_metadata  # set_metadata: re-exported

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17
# ONNX Runtime has kernels for these graphs' operators (Conv, Gemm, MaxPool, LRN ...) from opset 7 on;
# torch.onnx would write opset 6 and leave a model nothing can run.
MIN_OPSET = 7
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    batch: int | None = None  # None: dynamic batch dimension
    fp16: bool = False
    simplify: bool = True
    fold_bn: bool = True
    check: bool = True
    random_samples: int = 8
    dataset_samples: int = 64
    # labelled images for the parity check: "auto" (the training dataset recorded in the weights, or digits
    # for digit / unnamed classes), a dataset spec, or "none"
    dataset: str = "auto"
    tolerance_overrides: dict = field(default_factory=dict)
    input_format: str = "float-nchw"  # or raw pixels with normalization in the graph (exporter.input_format)
    # Keras imports: the folder of Keras' own outputs to gate against (None: MODEL.keras-reference next to the
    # Keras file when it exists; "none": skip). See parity/keras_reference.py.
    keras_reference: str | None = None


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    report: ParityReport | None
    folded_batchnorms: list[str]
    simplified: bool
    sha256: str


def tool_versions() -> dict[str, str]:
    import onnxruntime
    import torchvision

    from alexnet_deploy import __version__

    versions = {"alexnet_deploy": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import onnxsim

        versions["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:
        pass
    return versions


def _torch_export(model: torch.nn.Module, shape: tuple, opts: ExportOptions) -> onnx.ModelProto:
    dummy = torch.randn(*shape)
    dynamic = None if opts.batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (dummy,), buf, dynamo=False, opset_version=opts.opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic, do_constant_folding=True,
            )
    except Exception as exc:  # torch.onnx raises several error types (UnsupportedOperatorError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "opset" in first.lower() or "not supported" in first.lower():
            raise ExportError(f"torch.onnx cannot export this model at opset {opts.opset}: {first}; "
                              f"try --opset {DEFAULT_OPSET}") from None
        raise ExportError(f"torch.onnx export failed: {first}") from None
    return onnx.load_from_string(buf.getvalue())


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    from alexnet_deploy.deps import require

    onnxsim = require("onnxsim")
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises RuntimeError/ValueError/...
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", str(exc).splitlines()[0][:200])
        return model, False
    if not ok:
        log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
        return model, False
    return simplified, True


def drop_identity_pools(model: onnx.ModelProto) -> list[str]:
    """Remove pooling nodes that are the identity, in place: 1x1 kernel, unit strides and dilations, no padding.
    torchvision's AdaptiveAvgPool2d((6, 6)) on the 6x6 map of a 224 input exports as one, and ONNX Runtime
    ran it (as QLinearAveragePool in INT8 models) in 0.06 ms of a 2.4 ms INT4-FC batch-1 run; onnxsim keeps
    it. Exact: the output is the input. Returns the removed nodes' names."""
    g = model.graph
    outputs = {o.name for o in g.output}
    dropped = []
    for n in list(g.node):
        if n.op_type not in ("AveragePool", "MaxPool") or len(n.output) != 1 or n.output[0] in outputs:
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        kernel = a.get("kernel_shape") or []
        auto_pad = a.get("auto_pad", b"NOTSET")
        if not kernel or any(v != 1 for v in [*kernel, *a.get("strides", []), *a.get("dilations", [])]) \
                or any(a.get("pads", [])) or auto_pad not in (b"NOTSET", b"VALID"):
            continue
        for c in g.node:
            for k, name in enumerate(c.input):
                if name == n.output[0]:
                    c.input[k] = n.input[0]
        for vi in [v for v in g.value_info if v.name == n.output[0]]:
            g.value_info.remove(vi)
        g.node.remove(n)
        dropped.append(n.name)
    return dropped


def parity_check(onnx_path, loaded: LoadedModel, metadata: ModelMetadata, opts: ExportOptions,
                 name: str) -> ParityReport:
    """The exported file on ONNX Runtime CPU vs the PyTorch model, on seeded noise and real digits."""
    from alexnet_deploy.parity.run import run_parity
    from alexnet_deploy.parity.sets import parity_sets
    from alexnet_deploy.runtime.runners.ort import OrtRunner
    from alexnet_deploy.runtime.runners.torch_runner import TorchRunner

    tol = tolerances_for(metadata.precision, opts.tolerance_overrides)
    sets = parity_sets(metadata, opts.dataset if opts.dataset_samples else None, opts.dataset_samples,
                       opts.random_samples)
    with OrtRunner(onnx_path, metadata) as candidate, TorchRunner(loaded) as reference:
        report = run_parity(candidate, reference, sets, tol, metadata.precision)
    report.candidate, report.reference = printable_path(name), f"PyTorch FP32 ({printable_path(loaded.source)})"
    return report


def export_onnx(loaded: LoadedModel, output: str | Path, opts: ExportOptions | None = None) -> ExportResult:
    opts = opts or ExportOptions()
    output = check_writable(output)
    if output.suffix != ".onnx":
        raise UserInputError(f"output {output} should end in .onnx")
    if opts.opset < MIN_OPSET:
        raise ExportError(f"opset {opts.opset} is too low for these operators (ONNX Runtime and TensorRT run "
                          f"Conv/Gemm/MaxPool/LRN from opset {MIN_OPSET}); use --opset {DEFAULT_OPSET}")
    if opts.batch is not None and opts.batch < 1:
        raise UserInputError(f"--batch must be at least 1, got {opts.batch}")
    from alexnet_deploy.models.weights import check_finite

    check_finite(loaded)  # NaN/Inf weights: name the tensor now, not "disagrees with PyTorch" after exporting
    model = loaded.model.eval()
    folded: list[str] = []
    if opts.fold_bn and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        from alexnet_deploy.exporter.bn_fold import fold_batchnorm

        model, folded = fold_batchnorm(model)
    shape = (opts.batch or 1, 3, loaded.preprocessing.crop, loaded.preprocessing.crop)
    proto = _torch_export(model, shape, opts)
    simplified = False
    if opts.simplify:
        proto, simplified = _simplify(proto)
    identity = drop_identity_pools(proto)
    if opts.fp16:  # no FP32 ONNX is saved here: provenance is the weights file (source_sha256), nothing else
        proto = to_fp16(proto)
    metadata = ModelMetadata(
        variant=loaded.variant, class_names=list(loaded.class_names), preprocessing=loaded.preprocessing,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        output_kind="probabilities" if loaded.softmax else "logits", batch=opts.batch,
        precision="fp16" if opts.fp16 else "fp32", io_dtype="float32", opset=opts.opset,
        source_weights=_source_relative_to(loaded, output), source_sha256=loaded.source_sha256,
        training_dataset=recorded_dataset(loaded.info.get("dataset")), versions=tool_versions(),
        extra={"folded_batchnorms": folded, "simplified": simplified, "identity_nodes_removed": identity,
               **_source_absolute(loaded),
               **({"converted_from": "the FP32 graph exported from the weights in this run (not saved)"}
                  if opts.fp16 else {}),
               **({"heldout_accuracy": loaded.info["heldout_accuracy"]} if "heldout_accuracy" in loaded.info else {})},
    )
    if opts.input_format != "float-nchw":  # raw-pixel input: Cast/scale/normalize as explicit nodes
        from alexnet_deploy.exporter.input_format import add_pixel_input

        proto, metadata = add_pixel_input(proto, metadata, opts.input_format)
    keras_ref = _keras_reference(loaded, metadata, opts, output)
    set_metadata(proto, metadata)
    proto.producer_name, proto.producer_version = "alexnet-deploy", metadata.versions["alexnet_deploy"]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"onnx.checker rejected the exported model: {str(exc).splitlines()[0][:300]}") from None
    data = proto.SerializeToString()
    report = None
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
        if opts.check:
            report = parity_check(str(tmp), loaded, metadata, opts, output.name)
            if not report.passed:
                raise ParityError(
                    f"exported model disagrees with PyTorch; {output} was not written:\n{report.table()}", report)
        if keras_ref is not None:  # an imported Keras model: the reference is Keras itself, not our port
            from alexnet_deploy.parity.keras_reference import check_against_reference

            kreport = check_against_reference(str(tmp), metadata, keras_ref, output.name)
            for kset in kreport.sets:
                kset.name = f"keras reference ({kset.name})"
            if not kreport.passed:
                raise ParityError(f"exported model disagrees with Keras' own outputs ({keras_ref}); {output} was "
                                  f"not written:\n{kreport.table()}", kreport)
            if report is not None:
                report.sets.extend(kreport.sets)
            else:
                report = kreport
    return ExportResult(output, metadata, report, folded, simplified, sha256_bytes(data))


def _keras_reference(loaded: LoadedModel, metadata: ModelMetadata, opts: ExportOptions, output: Path):
    """Keras imports: record what was imported in the metadata; the Keras reference folder to gate against."""
    if loaded.info.get("preprocessing_from"):  # --mean/--std/--input-size, Keras layers, or variant defaults
        metadata.extra["preprocessing_from"] = loaded.info["preprocessing_from"]
    if "keras" not in loaded.info:
        return None
    from alexnet_deploy.parity.keras_reference import find_reference

    metadata.extra["keras"] = loaded.info["keras"]
    # also with check=False (alexnet-deploy parities in a later step against PyTorch): the reference is Keras
    folder = find_reference(loaded, opts.keras_reference)
    if folder is not None:
        from alexnet_deploy.fileio import sha256_file
        from alexnet_deploy.parity.golden import MANIFEST

        metadata.extra["keras_reference"] = {
            "path": os.path.relpath(os.path.realpath(folder), os.path.realpath(output.parent)),
            "absolute": os.path.realpath(folder), "manifest_sha256": sha256_file(folder / MANIFEST)}
    return folder


def _source_file(loaded: LoadedModel) -> str | None:
    if loaded.source.startswith("random(") or loaded.source == "imagenet" or not os.path.isfile(loaded.source):
        return None
    return os.path.realpath(loaded.source)


def _source_relative_to(loaded: LoadedModel, output: Path) -> str:
    """The weights path as the model file will find it: relative to the model's folder (so the pair can be
    moved together and used from any working directory), absolute where no relative path exists."""
    src = _source_file(loaded)
    if src is None:
        return loaded.source
    try:
        return os.path.relpath(src, os.path.realpath(output.parent))
    except ValueError:  # another drive (Windows)
        return src


def _source_absolute(loaded: LoadedModel) -> dict:
    src = _source_file(loaded)
    return {"source_weights_absolute": src} if src else {}
