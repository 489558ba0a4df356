"""INT8 weights that cannot overflow ONNX Runtime's int16 pair sums on x86 without VNNI.

ONNX Runtime's U8S8 kernels on AVX2 and on AVX-512 without VNNI (MLAS's ``MlasGemmU8S8Kernel*`` and
``MlasConvSymKernelAvx2/Avx512Core``) multiply UINT8 activations by INT8 weights with ``vpmaddubsw``, which
adds the two products of each pair of neighbouring K elements into a **saturating int16** before widening. With
activations up to 255 (UINT8, or INT8 shifted by 128) a pair saturates when both weights have the same sign and
``|w1| + |w2| > 128`` (255 x 129 = 32,895 > 32,767); VNNI (``vpdpbusd``), AMX and ARM64 accumulate in int32 and
never do. ONNX Runtime's quantization docs warn about it; its remedy is ``reduce_range`` (7-bit weights in every
layer), NNCF's is ``overflow_fix`` (the weight range halved in the first layer, or in all). Both cost precision
where nothing can overflow.

Here the bound is read per output channel from the quantized weights, in the K order the kernels pair them:
ONNX Runtime reorders a Conv filter (M, C/group, kh, kw) to (kh, kw, C/group) per output channel
(``QLinearConv::ReorderFilter``, and ``MlasConvSymPackW`` packs 4 input channels per kernel position, which
pairs the same neighbours since it is used only when C/group % 4 == 0); a Gemm/MatMul pairs neighbouring input
features. Only the channels whose worst same-sign pair can exceed 128 change: each gets the largest
quantization level L in [64, 127] (weights in [-L, L], scale max|w| / L) at which none of its pairs can, found by
bisection (the pair sums grow with L; L = 64 is always safe). Every other channel keeps its 8-bit weights, so VNNI
and AMX hosts lose nothing where the weights were safe and the kernels (and their speed) are the same on every
host. The bound depends on the weights alone (255 is the largest activation code), so the model is safe for any
input, not only for the calibration images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from alexnet_deploy.onnxgraph import consumers, module_of_node, producers

INT16_MAX = 32767
MAX_ACTIVATION_CODE = 255  # UINT8 activations, or INT8 ones that the x86 kernels shift by 128
SAFE_PAIR_SUM = INT16_MAX // MAX_ACTIVATION_CODE  # 128: |w1| + |w2| of a same-sign pair that cannot saturate
MIN_LEVEL = SAFE_PAIR_SUM // 2  # 64: with |w| <= 64 no pair can exceed 128
MAX_LEVEL = 127  # onnxruntime's symmetric INT8 weights: [-127, 127]
REASON = ("UINT8 x INT8 pair sums can exceed int16 (vpmaddubsw) on x86 AVX2 / AVX-512 without VNNI: "
          "the channel's weights were requantized to the largest level that cannot")


def channel_rows(op_type: str, w: np.ndarray, attrs: dict) -> np.ndarray | None:
    """The weight as (output channels, K) in the K order ONNX Runtime's kernels pair (see the module doc);
    None for a layout this does not know (left unchanged)."""
    if op_type == "Conv" and w.ndim >= 3:
        return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)  # (M, C/g, kh, kw) -> (M, kh*kw*C/g), C innermost
    if op_type == "Gemm" and w.ndim == 2:
        return w if int(attrs.get("transB", 0)) else w.T
    if op_type == "MatMul" and w.ndim == 2:
        return w.T
    return None


def worst_pair(rows: np.ndarray) -> np.ndarray:
    """Per row: the largest |w1 + w2| over the kernel's pairs (k, k+1), k even (a zero pads an odd K)."""
    q = rows.astype(np.int32)
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.int32)], axis=1)
    pairs = q.reshape(q.shape[0], -1, 2)
    return np.abs(pairs.sum(axis=2)).max(axis=1) if pairs.size else np.zeros(q.shape[0], np.int32)


def _quantize_rows(rows: np.ndarray, amax: np.ndarray, level: np.ndarray) -> np.ndarray:
    scale = (amax / level)[:, None]
    return np.clip(np.round(rows / scale), -level[:, None], level[:, None])


def safe_levels(rows: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """Per row: the largest level L in [MIN_LEVEL, MAX_LEVEL] whose weights round(w * L / amax) have no pair
    above SAFE_PAIR_SUM (bisection on every row at once: the pair sums do not shrink as L grows)."""
    lo = np.full(len(rows), MIN_LEVEL, np.int64)
    hi = np.full(len(rows), MAX_LEVEL, np.int64)
    amax = np.where(amax > 0, amax, 1.0)
    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = worst_pair(_quantize_rows(rows, amax, mid)) <= SAFE_PAIR_SUM
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid - 1)
    return lo


@dataclass
class LayerFix:
    layer: str  # PyTorch module name (or the ONNX node name)
    channels: int  # output channels
    changed: int  # channels requantized
    min_level: int  # smallest level given (127: unchanged)
    worst_pair_before: int  # largest same-sign |w1| + |w2| before (> 128: could saturate)

    def as_dict(self) -> dict:
        return {"channels": self.channels, "changed": self.changed, "min_level": self.min_level,
                "worst_pair_before": self.worst_pair_before}


def _integer_layers(model: onnx.ModelProto):
    """(node, weight DequantizeLinear) of each Conv/Gemm/MatMul whose activation and INT8 weight both come
    from DequantizeLinear: what ONNX Runtime fuses into its integer kernels."""
    producer = producers(model.graph)
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        act, wdq = producer.get(n.input[0]), producer.get(n.input[1])
        if act is None or act.op_type != "DequantizeLinear" or wdq is None or wdq.op_type != "DequantizeLinear":
            continue
        q = inits.get(wdq.input[0])
        if q is None or q.data_type != onnx.TensorProto.INT8 or wdq.input[1] not in inits:
            continue
        yield n, wdq


def layer_risks(model: onnx.ModelProto) -> dict[str, int]:
    """Layer -> its worst same-sign pair sum |w1| + |w2| in the QDQ ``model`` (> 128: can saturate on AVX2)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n, wdq in _integer_layers(model):
        rows = channel_rows(n.op_type, numpy_helper.to_array(inits[wdq.input[0]]), _attrs(n))
        if rows is not None:
            out[module_of_node(n.name) or n.name] = int(worst_pair(rows).max()) if rows.size else 0
    return out


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fix_pair_overflow(model: onnx.ModelProto, float_weights: dict[str, np.ndarray] | None = None) -> list[LayerFix]:
    """Requantize, in place, the INT8 weight channels of ``model`` (a QDQ model from onnxruntime's quantizer,
    symmetric per-channel or per-tensor weights) whose pairs can saturate int16; see the module doc.
    ``float_weights`` (initializer name -> FP32 weights, the quantizer's input) are requantized from, so no
    rounding is stacked on rounding; a weight not found there is taken as its dequantized INT8 values. Returns
    one entry per integer layer (``changed`` 0 where nothing could overflow)."""
    inits = {i.name: i for i in model.graph.initializer}
    users = {name: len(c) for name, c in consumers(model.graph).items()}
    fixes = []
    for n, wdq in _integer_layers(model):
        q_init, s_init = inits[wdq.input[0]], inits[wdq.input[1]]
        q = numpy_helper.to_array(q_init)
        scale = numpy_helper.to_array(s_init).astype(np.float64)
        attrs = _attrs(n)
        rows_q = channel_rows(n.op_type, q, attrs)
        if rows_q is None or users.get(q_init.name, 0) != 1 or users.get(s_init.name, 0) != 1:
            continue  # unknown layout, or shared weights: left as they are
        if len(wdq.input) > 2 and wdq.input[2] in inits and np.any(numpy_helper.to_array(inits[wdq.input[2]])):
            continue  # asymmetric weights: not what this project's quantizer writes
        worst = worst_pair(rows_q)
        name = module_of_node(n.name) or n.name
        at_risk = worst > SAFE_PAIR_SUM
        fix = LayerFix(name, len(worst), int(at_risk.sum()), MAX_LEVEL, int(worst.max()) if worst.size else 0)
        fixes.append(fix)
        if not at_risk.any():
            continue
        per_channel = scale.ndim == 1 and scale.size == len(worst)
        src = (float_weights or {}).get(q_init.name.removesuffix("_quantized"))
        if src is None or src.shape != q.shape:
            src = q.astype(np.float64) * (_channel_view(scale, q, n.op_type, attrs) if per_channel else scale)
        rows = channel_rows(n.op_type, np.asarray(src, np.float64), attrs)
        amax = np.abs(rows).max(axis=1)
        if not per_channel:  # one scale for the whole tensor: one level for every channel
            amax = np.full(len(rows), amax.max())
            levels = np.full(len(rows), safe_levels(rows, amax).min())
        else:
            levels = np.where(at_risk, safe_levels(rows, amax), MAX_LEVEL)
            keep = ~at_risk
        new_rows = _quantize_rows(rows, np.where(amax > 0, amax, 1.0), levels)
        new_scale = np.where(amax > 0, amax, 1.0) / levels
        if per_channel:  # untouched channels keep their exact INT8 values and scales
            new_rows[keep] = rows_q[keep]
            new_scale[keep] = scale[keep]
        else:
            new_scale = new_scale[:1].reshape(scale.shape)
        fix.min_level = int(levels.min())
        q_init.CopyFrom(numpy_helper.from_array(_from_rows(new_rows, q.shape, n.op_type, attrs).astype(np.int8),
                                                q_init.name))
        s_init.CopyFrom(numpy_helper.from_array(new_scale.astype(np.float32).reshape(scale.shape), s_init.name))
    return fixes


def _from_rows(rows: np.ndarray, shape: tuple, op_type: str, attrs: dict) -> np.ndarray:
    """Inverse of :func:`channel_rows`."""
    if op_type == "Conv":
        moved = (shape[0], *shape[2:], shape[1])
        return np.moveaxis(rows.reshape(moved), -1, 1)
    if op_type == "Gemm" and int(attrs.get("transB", 0)):
        return rows
    return rows.T


def _channel_view(scale: np.ndarray, q: np.ndarray, op_type: str, attrs: dict) -> np.ndarray:
    """A per-output-channel scale shaped to broadcast over the weight tensor ``q``."""
    if op_type == "Conv":
        return scale.reshape(-1, *([1] * (q.ndim - 1)))
    if op_type == "Gemm" and int(attrs.get("transB", 0)):
        return scale.reshape(-1, 1)
    return scale.reshape(1, -1)


def summary(fixes: list[LayerFix]) -> dict:
    """The provenance entry: the rule, and per layer what changed."""
    return {"rule": f"same-sign |w1|+|w2| <= {SAFE_PAIR_SUM} on the kernels' K pairs (int16-safe with UINT8 "
                    f"activations up to {MAX_ACTIVATION_CODE})",
            "reason": REASON, "layers": {f.layer: f.as_dict() for f in fixes}}


__all__ = ["fix_pair_overflow", "layer_risks", "worst_pair", "safe_levels", "channel_rows", "summary", "LayerFix",
           "SAFE_PAIR_SUM"]
