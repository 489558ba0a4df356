"""Activation ranges for symmetric INT8, computed the way TensorRT's calibrators do.

One pass over the calibration images records each tensor's max |x|; a second pass fills a fine histogram of
|x| over [0, max] (FINE_BINS bins). From it:

- ``minmax``: the max |x| (TensorRT's IInt8MinMaxCalibrator);
- ``entropy``: TensorRT's entropy calibration - the histogram folded to 2048 bins, every threshold from bin 128
  to bin 2048 tried, the clipped distribution quantized to 128 levels and compared by KL divergence, the
  threshold with the least divergence kept (as NVIDIA's pytorch-quantization ``_compute_amax_entropy``);
- ``percentile``: the value below which ``percentile`` % of |x| falls, read on the fine histogram (65,536
  bins) so that 99.99 and 99.999 give different answers.

ONNX Runtime's own entropy calibrator defaults to 128 histogram bins for 128 quantized bins, so its search
tries only the full range; these ranges go to ONNX Runtime through its calibration cache (TensorsData).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from alexnet_deploy.errors import UserInputError

ENTROPY_BINS = 2048  # TensorRT's histogram
QUANTIZED_BINS = 128  # 8-bit symmetric: 128 levels on each side of zero
FINE_BINS = ENTROPY_BINS * 32  # for percentiles
MIN_AMAX = 1e-6  # smallest range handed to ONNX Runtime


@dataclass
class Histograms:
    """|x| histograms over [0, amax] for each tensor (``hist[name]`` has FINE_BINS counts)."""

    amax: dict[str, float]
    hist: dict[str, np.ndarray]
    num_images: int
    channel_amax: dict[str, np.ndarray] = field(default_factory=dict)  # max |x| per channel (axis 1)


def _session(model: onnx.ModelProto, tensors: list[str], threads: int | None):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def _batches(x: np.ndarray, batch: int, static: int | None):
    step = static or batch
    for i in range(0, len(x), step):
        xb = x[i: i + step]
        if static and len(xb) < static:
            return  # a static-batch model cannot take a short tail batch
        yield xb


def collect_histograms(model: onnx.ModelProto, x: np.ndarray, input_name: str, tensors: list[str],
                       batch: int = 32, static_batch: int | None = None, threads: int | None = None) -> Histograms:
    """Two passes of ONNX Runtime over ``x`` with ``tensors`` exposed as outputs: max |x|, then histograms."""
    if not tensors:
        return Histograms({}, {}, 0, {})
    inner = [t for t in tensors if t != input_name]
    sess = _session(model, inner, threads)
    names = [o.name for o in sess.get_outputs()]
    idx = {t: names.index(t) for t in inner}

    def values(xb):
        outs = sess.run(None, {input_name: xb}) if inner else []
        for t in tensors:
            yield t, (xb if t == input_name else outs[idx[t]])

    amax = dict.fromkeys(tensors, 0.0)
    channel: dict[str, np.ndarray] = {}
    n = 0
    for xb in _batches(x, batch, static_batch):
        n += len(xb)
        for t, v in values(xb):
            if v.size and v.ndim >= 2:
                c = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1))
                channel[t] = c if t not in channel else np.maximum(channel[t], c)
                amax[t] = max(amax[t], float(c.max()))
            elif v.size:
                amax[t] = max(amax[t], float(np.abs(v).max()))
    if n == 0:
        raise UserInputError(f"no full calibration batch: {len(x)} images for a model with a static batch of "
                             f"{static_batch}")
    hist = {t: np.zeros(FINE_BINS, np.int64) for t in tensors}
    for xb in _batches(x, batch, static_batch):
        for t, v in values(xb):
            if amax[t] <= 0 or not v.size:
                hist[t][0] += v.size
                continue
            bins = np.abs(v.astype(np.float64, copy=False)).ravel() * (FINE_BINS / amax[t])
            hist[t] += np.bincount(np.minimum(bins.astype(np.int64), FINE_BINS - 1), minlength=FINE_BINS)
    return Histograms(amax, hist, n, channel)


def entropy_amax(hist: np.ndarray, amax: float, quantized_bins: int = QUANTIZED_BINS) -> float:
    """TensorRT's entropy calibration on a |x| histogram over [0, amax] (any multiple of 2048 bins)."""
    if amax <= 0:
        return 0.0
    bins = hist.reshape(ENTROPY_BINS, -1).sum(1).astype(np.float64) if hist.size != ENTROPY_BINS else hist.astype(np.float64)
    bins[0] = bins[1]  # zeros (after ReLU) would dominate the distribution; NVIDIA's reference does the same
    total = bins.sum()
    if total <= 0:
        return amax
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = sum(bins[i:])
    best_i, best_kl = ENTROPY_BINS, np.inf
    for i in range(quantized_bins, ENTROPY_BINS + 1):
        p = bins[:i].copy()
        p[-1] += tail[i]
        chunk = (np.arange(i) * quantized_bins) // i
        nz = bins[:i] > 0
        sums = np.bincount(chunk, weights=bins[:i], minlength=quantized_bins)
        counts = np.bincount(chunk[nz], minlength=quantized_bins)
        q = np.zeros(i)
        q[nz] = sums[chunk[nz]] / counts[chunk[nz]]
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        mask = ps > 0
        if np.any(qs[mask] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(ps[mask] * np.log(ps[mask] / qs[mask])))
        if kl <= best_kl:  # ties: the larger threshold, as the reference (last argmin)
            best_i, best_kl = i, kl
    return amax * best_i / ENTROPY_BINS


def percentile_amax(hist: np.ndarray, amax: float, percentile: float) -> float:
    """The upper edge of the fine-histogram bin where the cumulative share of |x| reaches ``percentile`` %."""
    total = hist.sum()
    if amax <= 0 or total <= 0:
        return amax
    cdf = np.cumsum(hist) / total
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return amax * min(i + 1, hist.size) / hist.size


def thresholds(h: Histograms, method: str, percentile: float = 99.999) -> dict[str, float]:
    """Per-tensor symmetric clipping threshold (amax) for ``method`` (minmax | entropy | percentile)."""
    if method == "minmax":
        return dict(h.amax)
    if method == "entropy":
        return {t: entropy_amax(h.hist[t], h.amax[t]) for t in h.amax}
    if method == "percentile":
        return {t: percentile_amax(h.hist[t], h.amax[t], percentile) for t in h.amax}
    raise UserInputError(f"unknown calibration method {method!r}; choose minmax, entropy, percentile or auto")


def tensors_data(amax: dict[str, float], method: str, nonnegative: set[str] | frozenset = frozenset()):
    """ONNX Runtime's TensorsData for ranges [-amax, amax], or [0, amax] for the tensors in ``nonnegative``
    (ReLU outputs, for asymmetric UINT8 activations)."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData  # also exported there by 1.18-1.23 (JetPack 6)
    from onnxruntime.quantization.calibrate import CalibrationMethod

    ort_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[method]
    # a tensor that is always zero (a dead channel group) still needs a positive scale for TensorRT
    data = {t: TensorData(lowest=np.float32(0.0 if t in nonnegative else -max(a, MIN_AMAX)),
                          highest=np.float32(max(a, MIN_AMAX)))
            for t, a in amax.items()}
    return TensorsData(ort_method, data)


__all__ = ["Histograms", "collect_histograms", "entropy_amax", "percentile_amax", "thresholds", "tensors_data",
           "ENTROPY_BINS", "QUANTIZED_BINS", "FINE_BINS"]
