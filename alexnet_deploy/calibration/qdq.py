"""Explicit INT8: a QDQ ONNX model made with onnxruntime.quantization. Weights are per-channel symmetric INT8
everywhere. The ``tensorrt`` and ``all`` placements are what TensorRT's parser accepts: symmetric INT8
activations (zero points 0) and float biases (TensorRT rejects an INT32 bias behind DequantizeLinear).
The ``ort`` placement (the default, for ONNX Runtime's CPU kernels) uses what those kernels run fastest:
UINT8 asymmetric activations, [0, amax] after a ReLU (ONNX Runtime's quantizer then folds the ReLU into the
pair's clamp, and its NHWC pooling kernels take the UINT8 tensors) and an INT32 bias on the float-output Gemm
(so it still fuses into QGemm). On the 2-core EPYC that took torchvision's batch-1 INT8 run from 4.3 to
3.7 ms (docs/benchmarks/int4-torchvision-epyc.md); TensorRT stacks refuse such a model in one line
(:func:`.placement.require_tensorrt_qdq`).

Where the Q/DQ pairs go is decided by :mod:`.placement` (``ort`` by default, ``tensorrt`` for engines); the activation
ranges come from :mod:`.ranges` (TensorRT's entropy search, fine-histogram percentiles, min/max) and reach
ONNX Runtime as its TensorsData, so ONNX Runtime only inserts the nodes.
"""
from __future__ import annotations

import contextlib
import enum
import inspect
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx import numpy_helper

from alexnet_deploy.calibration.data import CalibrationSet
from alexnet_deploy.calibration.overflow import fix_pair_overflow
from alexnet_deploy.calibration.overflow import summary as overflow_summary
from alexnet_deploy.calibration.placement import (Placement, QdqPlan, layer_names, nonnegative_tensors, plan_qdq,
                                                  quantize_float_output_bias, remove_qdq_pairs)
from alexnet_deploy.calibration.ranges import Histograms, collect_histograms, tensors_data, thresholds
from alexnet_deploy.fileio import atomic_write_json, sha256_file
from alexnet_deploy.errors import ExportError, UserInputError
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
    placement: Placement = Placement.ORT
    # requantize the INT8 weight channels whose UINT8 x INT8 pair sums can saturate int16 on x86 without VNNI
    # (ort and all placements, whose layers ONNX Runtime runs on its integer kernels; see overflow.py)
    overflow_fix: bool = True


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
# onnxruntime extra_options common to every placement: symmetric INT8 (TensorRT needs zero points of 0), float
# biases (TensorRT rejects an INT32 bias behind DequantizeLinear); ``ort`` then switches activations to
# asymmetric UINT8 (quantize) and gives its float-output Gemm an INT32 bias (placement.quantize_float_output_bias)
BASE_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def weighted_layers(model: onnx.ModelProto) -> dict[str, str]:
    """PyTorch module name -> ONNX node name of every Conv/Gemm/MatMul (the layers INT8 quantizes)."""
    return layer_names(model)


def measure(fp32_path: Path, cal: CalibrationSet, meta: ModelMetadata, placement: Placement = Placement.ALL) -> Histograms:
    """|x| histograms of the tensors ``placement`` quantizes (``all`` covers both placements)."""
    model = onnx.load(str(fp32_path))
    plan = plan_qdq(model, placement)
    return collect_histograms(model, cal.x, meta.input_name, plan.activations, static_batch=meta.batch)


def ranges_for(hist: Histograms, cfg: QuantConfig) -> dict[str, float]:
    return thresholds(hist, cfg.method.value, cfg.percentile)


def save_ranges(path: Path, amax: dict[str, float], cfg: QuantConfig, channel_amax: dict | None = None) -> None:
    atomic_write_json(path, {"method": cfg.method.value, "amax": {t: float(a) for t, a in amax.items()},
                             "channel_amax": {t: [float(v) for v in a] for t, a in (channel_amax or {}).items()}})


def load_ranges(path: Path) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(per-tensor amax, per-channel amax) from a range file written by :func:`save_ranges`."""
    try:
        data = json.loads(Path(path).read_text())
        return ({str(t): float(a) for t, a in data["amax"].items()},
                {str(t): np.asarray(a, np.float64) for t, a in data.get("channel_amax", {}).items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserInputError(f"calibration cache {path} is not a range file written by alexnet-calibrate: {exc}") from None


def quantize(fp32_path: Path, out_path: Path, amax: dict[str, float], cfg: QuantConfig,
             plan: QdqPlan | None = None) -> QdqPlan:
    """Write a QDQ INT8 model to ``out_path`` with activation ranges [-amax, amax] (the caller makes it
    atomic and adds metadata). Returns the plan that placed the Q/DQ pairs."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    plan = plan or plan_qdq(model, cfg.placement, cfg.keep_float)
    missing = [t for t in plan.activations if t not in amax]
    if missing:
        raise UserInputError(f"the calibration ranges lack {len(missing)} tensors the model needs "
                             f"({', '.join(missing[:3])}...); recalibrate without the cache")
    extra = {**BASE_EXTRA_OPTIONS, **plan.extra_options}
    act_type = QuantType.QInt8
    nonneg: set[str] = set()
    if plan.placement is Placement.ORT:  # ONNX Runtime only: UINT8 asymmetric activations (see the module doc)
        act_type, extra["ActivationSymmetric"] = QuantType.QUInt8, False
        nonneg = nonnegative_tensors(model)
    data = tensors_data({t: amax[t] for t in plan.activations}, cfg.method.value, nonneg)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice on the root logger for every call
    try:
        with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory(prefix=".alexnet-q.",
                                                                                    dir=Path(out_path).parent) as tmp:
            kwargs = dict(quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=act_type,
                          weight_type=QuantType.QInt8, calibrate_method=data.calibration_method, extra_options=extra,
                          **plan.ort_kwargs())
            try:
                if _takes_range_cache():
                    from onnxruntime.quantization.calibrate import save_tensors_data

                    cache = Path(tmp) / "ranges.json"  # newer onnxruntime takes precomputed ranges as a cache
                    save_tensors_data(data, cache)
                    quantize_static(str(fp32_path), str(out_path), None, calibration_cache_path=str(cache), **kwargs)
                else:
                    _quantize_direct(fp32_path, out_path, data, cfg, plan, extra, act_type)
            except (ValueError, KeyError, IndexError, TypeError, RuntimeError, AssertionError) as exc:
                # the quantizer's own checks (e.g. "scale issue" from non-finite ranges, a node it cannot
                # place): one line naming the model, not a traceback from inside onnxruntime
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"onnxruntime.quantization could not quantize {Path(fp32_path).name}: {detail} "
                                  "(an FP32 ONNX exported by alexnet-export onnx, or one simplified with onnxsim, "
                                  "is what it takes)") from exc
    finally:
        root.setLevel(level)
    fix_overflow = cfg.overflow_fix and plan.placement is not Placement.TENSORRT  # tensorrt: float convs on ORT
    if plan.float_tensors or fix_overflow:
        q = onnx.load(str(out_path))
        changed = False
        if fix_overflow:  # before the INT32 bias below, whose scale is activation x weight scale
            fixes = fix_pair_overflow(q, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
            plan.overflow_fix = overflow_summary(fixes)
            changed = any(f.changed for f in fixes)
        if plan.float_tensors:  # ``ort``: the network output stays float (ONNX Runtime quantized it regardless)
            removed = remove_qdq_pairs(q, plan.float_tensors)
            # so ONNX Runtime fuses the float-output Gemm (QGemm)
            changed = bool(quantize_float_output_bias(q)) or bool(removed) or changed
        if changed:
            onnx.save(q, str(out_path))
    return plan


def _takes_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _quantize_direct(fp32_path: Path, out_path: Path, data, cfg: QuantConfig, plan: QdqPlan, extra: dict,
                     act_type) -> None:
    """onnxruntime < 1.24 (no calibration cache): the steps quantize_static runs after calibrating."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = load_model_with_shape_infer(Path(fp32_path))
    op_types = plan.op_types or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's "all"
    q = QDQQuantizer(model, cfg.per_channel, False, QuantType.QInt8, act_type, data, None, plan.nodes_to_exclude,
                     op_types, extra)
    q.quantize_model()
    q.model.save_model_to_file(str(out_path), False)


def provenance(fp32_path: Path, meta: ModelMetadata, cal: CalibrationSet, cfg: QuantConfig) -> dict:
    from alexnet_deploy.calibration.ranges import ENTROPY_BINS, FINE_BINS, QUANTIZED_BINS

    ort = cfg.placement is Placement.ORT  # what quantize() writes for each placement (see the module doc)
    params = {"percentile": cfg.percentile if cfg.method is Method.PERCENTILE else None,
              "per_channel": cfg.per_channel,
              "activations": "uint8 asymmetric per-tensor" if ort else "int8 symmetric per-tensor",
              "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric",
              "bias": ("float, except int32 behind DequantizeLinear for a Gemm with a float output"
                       if ort else "float"),
              "placement": cfg.placement.value}
    if cfg.method is Method.ENTROPY:
        params["histogram"] = {"bins": ENTROPY_BINS, "quantized_bins": QUANTIZED_BINS, "divergence": "KL"}
    elif cfg.method is Method.PERCENTILE:
        params["histogram"] = {"bins": FINE_BINS}
    return {
        "source_onnx_sha256": sha256_file(fp32_path),
        "preprocessing": meta.preprocessing.to_dict(),
        "method": cfg.method.value,
        "parameters": params,
        "kept_float": list(cfg.keep_float),
        **cal.provenance(),
    }


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


def temp_dir(parent: Path) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=".alexnet-calib.", dir=parent)
