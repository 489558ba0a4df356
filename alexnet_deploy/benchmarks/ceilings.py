"""The measured ceilings of the roofline: FP32 and INT8 GEMM rates (ONNX Runtime's MLAS kernels, the ones the
ort rows use, and numpy's BLAS for FP32) and streaming memory bandwidth (a large copy). The machine description
itself is runtime/machine.py."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _best_rate(fn, flops: float, seconds: float) -> float:
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def _ort_session(nodes, inputs, outputs):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "ceiling", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def cpu_peak_gflops(seconds: float = 0.5, n: int = 1024) -> float:
    """A measured FP32 ceiling of this CPU: the best SGEMM rate of ONNX Runtime's MLAS (the kernels the
    ort rows use) and of numpy's BLAS, each over ~``seconds``."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    rates = [_best_rate(lambda: a @ a, 2 * n ** 3, seconds / 2)]
    try:
        from onnx import TensorProto, helper

        sess = _ort_session([helper.make_node("MatMul", ["a", "b"], ["c"])],
                            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
                            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        rates.append(_best_rate(lambda: sess.run(None, {"a": a, "b": a}), 2 * n ** 3, seconds / 2))
    except Exception:  # noqa: BLE001 - onnx/onnxruntime absent: numpy's figure stands
        pass
    return max(rates)


def cpu_int8_peak_gops(seconds: float = 0.5, n: int = 1024) -> float | None:
    """A measured INT8 ceiling: ONNX Runtime's MatMulInteger (uint8 x int8 -> int32, the MLAS QGEMM that
    QLinearConv and MatMulNBits' accuracy level 4 use). None without onnx/onnxruntime."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    try:
        from onnx import TensorProto, helper

        sess = _ort_session([helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
                            [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                             helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                            [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    except Exception:  # noqa: BLE001 - onnx/onnxruntime absent
        return None
    return _best_rate(lambda: sess.run(None, {"a": a, "b": b}), 2 * n ** 3, seconds)


def _split_rate(fn, buf: np.ndarray, moved: float, seconds: float, threads: int | None) -> float:
    """Best GB/s of ``fn(part)`` over ``buf``, on one thread and split over ``threads`` (default: the CPU
    count); numpy releases the GIL in copies and reductions, so the threads stream in parallel."""
    k = max(1, threads or os.cpu_count() or 1)
    bounds = np.linspace(0, len(buf), k + 1, dtype=np.int64)
    chunks = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    rates = [_best_rate(lambda: fn(slice(None)), moved, seconds / 2)]
    if k > 1:
        with ThreadPoolExecutor(k) as pool:
            rates.append(_best_rate(lambda: list(pool.map(fn, chunks)), moved, seconds / 2))
    return max(rates)


def memory_copy_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """Copy bandwidth in GB/s: the best of copying a ``mb`` MB buffer (bytes read + bytes written), on one
    thread and split over ``threads``; far larger than any cache."""
    src = np.ones((mb << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return _split_rate(lambda c: np.copyto(dst[c], src[c]), src, 2 * src.nbytes, seconds, threads)


def memory_read_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """Read bandwidth in GB/s: the best of summing a ``mb`` MB buffer as int64 (a streaming read with one add
    per 8 bytes, nothing written), on one thread and split over ``threads``. This is the traffic of a layer's
    weights, which are only read: on the 2-core EPYC it measured 41 GB/s against 31-35 GB/s for a copy, and
    ONNX Runtime's FP32 GEMV on a 256 MB matrix streamed 40 GB/s."""
    buf = np.ones((mb << 20) // 8, dtype=np.int64)
    return _split_rate(lambda c: buf[c].sum(), buf, buf.nbytes, seconds, threads)


def memory_bandwidth_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """The memory ceiling of the roofline in GB/s: the better of the read and copy rates."""
    return max(memory_read_gbs(seconds / 2, mb, threads), memory_copy_gbs(seconds / 2, mb, threads))


def ceilings(seconds: float = 0.5) -> dict:
    """The roofline's ceilings on this machine, measured now (units in the keys)."""
    read, copy = memory_read_gbs(seconds), memory_copy_gbs(seconds)
    return {"fp32_gemm_gflops": cpu_peak_gflops(seconds), "int8_gemm_gops": cpu_int8_peak_gops(seconds),
            "memory_bandwidth_gbs": max(read, copy), "memory_read_gbs": read, "memory_copy_gbs": copy,
            "how": "best rate over ~0.5 s each: 1024^3 MatMul (ORT MLAS / numpy BLAS), 1024^3 MatMulInteger "
                   "u8 x s8 (ORT); memory = the better of reading (int64 sum) and copying (read + write "
                   "bytes) a 256 MB buffer, 1 and N threads"}
