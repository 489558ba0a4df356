"""Explicit INT8: a QDQ ONNX model made with onnxruntime.quantization that ONNX Runtime runs and TensorRT's
ONNX parser accepts (per-channel symmetric INT8 weights, symmetric INT8 activations, biases left in float:
ORT's default INT32 bias behind DequantizeLinear is rejected by TensorRT)."""
from __future__ import annotations

import enum
import inspect
import contextlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from alexnet_deploy.calibration.data import ArrayReader, CalibrationSet
from alexnet_deploy.errors import UserInputError
from alexnet_deploy.exporter.naming import module_of_node
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.runtime.metadata import ModelMetadata


class Method(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @classmethod
    def parse(cls, name: str) -> "Method":
        try:
            return cls(name)
        except ValueError:
            raise UserInputError(f"unknown calibration method {name!r}; choose minmax, entropy, percentile or auto") from None


@dataclass
class QuantConfig:
    method: Method = Method.MINMAX
    percentile: float = 99.999
    per_channel: bool = True
    keep_float: list[str] = field(default_factory=list)  # PyTorch module names kept in float


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def weighted_layers(model: onnx.ModelProto) -> dict[str, str]:
    """PyTorch module name -> ONNX node name of every Conv/Gemm/MatMul (the layers INT8 quantizes)."""
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            out[module_of_node(n.name) or n.name] = n.name
    return out


def _ort_method(method: Method):
    from onnxruntime.quantization import CalibrationMethod

    return {Method.MINMAX: CalibrationMethod.MinMax, Method.ENTROPY: CalibrationMethod.Entropy,
            Method.PERCENTILE: CalibrationMethod.Percentile}[method]


def quantize(fp32_path: Path, out_path: Path, cal: CalibrationSet, cfg: QuantConfig, meta: ModelMetadata,
             range_cache: Path | None = None) -> None:
    """Write a QDQ INT8 model to ``out_path`` (the caller makes it atomic and adds metadata)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    layers = weighted_layers(model)
    unknown = [m for m in cfg.keep_float if m not in layers]
    if unknown:
        raise UserInputError(f"cannot keep {unknown} in float: not a quantizable layer (have {', '.join(layers)})")
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
        "CalibTensorRangeSymmetric": True,
    }
    if cfg.method is Method.PERCENTILE:
        extra["CalibPercentile"] = cfg.percentile
    kwargs = {}
    if range_cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(range_cache)  # ranges computed once, reused per layer set
    reader = ArrayReader(cal.x, meta.input_name, static_batch=meta.batch)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice on the root logger for every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and prints histogram chatter on stdout
            quantize_static(
                str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=[layers[m] for m in cfg.keep_float], calibrate_method=_ort_method(cfg.method),
                extra_options=extra, **kwargs,
            )
    finally:
        root.setLevel(level)


def provenance(fp32_path: Path, meta: ModelMetadata, cal: CalibrationSet, cfg: QuantConfig) -> dict:
    return {
        "source_onnx_sha256": sha256_file(fp32_path),
        "preprocessing": meta.preprocessing.to_dict(),
        "method": cfg.method.value,
        "parameters": {"percentile": cfg.percentile if cfg.method is Method.PERCENTILE else None,
                       "per_channel": cfg.per_channel, "activations": "int8 symmetric",
                       "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric",
                       "bias": "float"},
        "kept_float": list(cfg.keep_float),
        **cal.provenance(),
    }


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


def temp_dir(parent: Path) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=".alexnet-calib.", dir=parent)
