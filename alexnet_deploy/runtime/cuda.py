"""The few CUDA runtime calls the TensorRT paths need, through NVIDIA's cuda-python (no torch).

Every call returns ``(err, *values)`` in cuda-python; :func:`check` turns a failure into one line.
"""
from __future__ import annotations

import numpy as np

from alexnet_deploy.errors import InferenceError, MissingDependencyError


def cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
        return runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
            return runtime
        except ImportError:
            raise MissingDependencyError("cuda-python", "cuda-python", "device memory for TensorRT") from None


def check(result):
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1].decode() if hasattr(rt, "cudaGetErrorName") else str(err)
        raise InferenceError(f"CUDA call failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    try:
        rt = cudart()
        err, n = rt.cudaGetDeviceCount()
        return int(n) if err == rt.cudaError_t.cudaSuccess else 0
    except (MissingDependencyError, OSError, RuntimeError):
        return 0


class Stream:
    def __init__(self):
        self.handle = check(cudart().cudaStreamCreate())

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle))

    def destroy(self) -> None:
        if self.handle is not None:
            check(cudart().cudaStreamDestroy(self.handle))
            self.handle = None


class EventSet:
    """``n`` CUDA events recorded on a stream; ``elapsed_ms`` gives the n-1 intervals between them."""

    def __init__(self, n: int):
        self.events = [check(cudart().cudaEventCreate()) for _ in range(n)]

    def record(self, i: int, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self.events[i], stream.handle))

    def elapsed_ms(self) -> list[float]:
        rt = cudart()
        return [float(check(rt.cudaEventElapsedTime(a, b))) for a, b in zip(self.events, self.events[1:])]

    def destroy(self) -> None:
        for e in self.events:
            check(cudart().cudaEventDestroy(e))
        self.events = []


class DeviceBuffer:
    """Device memory of ``nbytes``; copies to and from numpy arrays (pinned or not)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes)))

    def copy_from_host(self, host: np.ndarray, stream: Stream | None = None) -> None:
        rt = cudart()
        host = np.ascontiguousarray(host)
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(rt.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes, kind))
        else:
            check(rt.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream.handle))

    def copy_to_host(self, host: np.ndarray, stream: Stream | None = None) -> np.ndarray:
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(rt.cudaMemcpy(host.ctypes.data, self.ptr, host.nbytes, kind))
        else:
            check(rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream.handle))
        return host

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr))
            self.ptr = 0


def pinned_empty(shape, dtype) -> tuple[np.ndarray, int]:
    """A page-locked host array (fast, asynchronous H2D/D2H) and its pointer for :func:`free_pinned`."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    ptr = check(cudart().cudaMallocHost(nbytes))
    import ctypes

    buf = (ctypes.c_byte * nbytes).from_address(int(ptr))
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape), int(ptr)


def free_pinned(ptr: int) -> None:
    check(cudart().cudaFreeHost(ptr))
