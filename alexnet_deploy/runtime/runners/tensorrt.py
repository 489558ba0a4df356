"""TensorRT engine runner (tensorrt or tensorrt_rtx) without torch: cuda-python device memory, pinned host
buffers, H2D -> execute_async_v3 (named tensor addresses) -> D2H on one stream, dynamic batch within the
profile, optional CUDA graph capture for a fixed batch.

Before deserializing, the manifest next to the engine is checked against the running library, the GPU and
the engine bytes; a mismatch is one line naming both sides and the rebuild command."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import InferenceError, MissingDependencyError, ModelLoadError, UserInputError
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.runtime.metadata import ModelMetadata, read_onnx_metadata
from alexnet_deploy.runtime.runners.base import Runner, TensorSpec
from alexnet_deploy.runtime.trt_library import (check_compatible, gpu_properties, load_library, read_manifest,
                                                rebuild_command, rebuild_options, source_onnx_path)

# The builder interface (``--rebuild-if-stale``): ``rebuild(onnx_path, engine_path, options)`` builds the engine
# again, ``options`` being the TrtBuildOptions keywords its manifest recorded. The runtime never imports the
# exporter; the layer that opens the runner wires one in (alexnet_deploy.exporter.rebuild.rebuild_engine).
EngineBuilder = Callable[[str, Path, dict], object]


class TensorRTRunner(Runner):
    engine = "trt"

    def __init__(self, path, *, rebuild_if_stale: bool = False, rebuild: EngineBuilder | None = None,
                 cuda_graph: bool = False, library: str | None = None):
        if rebuild_if_stale and rebuild is None:
            raise UserInputError("rebuild_if_stale needs a rebuild callable (the builder interface: pass "
                                 "rebuild=alexnet_deploy.exporter.rebuild.rebuild_engine)")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        super().__init__(ModelMetadata.from_props(self.manifest["metadata"], str(self.path)))
        prof = self.manifest["build"]["profile"]
        self.min_batch, self.max_batch = int(prof["min"]), int(prof["max"])
        c, h, w = self.metadata.input_dims  # (H, W, 3) uint8 for a raw-pixel model (--input-format uint8-nhwc)
        self.input_spec = TensorSpec(self.manifest["input"]["name"], (None, c, h, w), np.dtype(self.metadata.input_dtype))
        self.rebuild_if_stale = rebuild_if_stale
        self.rebuild = rebuild
        self.cuda_graph = cuda_graph
        self.library = library or self.manifest["library"]["name"]

    # ------------------------------------------------------------------------------------ checks
    def preflight(self):
        """Everything that can be checked without deserializing: bytes, library, GPU. Returns (lib, gpu)."""
        size = os.path.getsize(self.path)
        if size != self.manifest["engine_bytes"] or sha256_file(self.path) != self.manifest["engine_sha256"]:
            raise ModelLoadError(f"{self.path} does not match its manifest (truncated or replaced: {size} bytes, "
                                 f"manifest says {self.manifest['engine_bytes']}); rebuild: "
                                 f"{rebuild_command(self.manifest, self.path)}")
        built = self.manifest["library"]
        try:
            lib = load_library(self.library)
        except MissingDependencyError:
            raise ModelLoadError(f"{self.path.name} was built with {built['name']} {built['version']}, which is not "
                                 f"installed here (pip install {built['name'].replace('_', '-')}=={built['version']})") from None
        problems = check_compatible(self.manifest, self.path, lib, None)
        gpu = None
        if not problems:
            gpu = gpu_properties()
            if gpu is None:
                raise InferenceError(f"no CUDA GPU is visible here; TensorRT engines need one ({self.path})")
            problems = check_compatible(self.manifest, self.path, lib, gpu)
        if problems and self.rebuild_if_stale:
            self._rebuild()
            return self.preflight()
        if problems:
            raise ModelLoadError(f"{self.path.name} is stale: {'; '.join(problems)}; rebuild with "
                                 f"`{rebuild_command(self.manifest, self.path)}` or pass --rebuild-if-stale")
        return lib, gpu

    def _rebuild(self) -> None:
        src = source_onnx_path(self.manifest, self.path)
        if src is None:
            raise ModelLoadError(f"cannot rebuild {self.path.name}: its ONNX {self.manifest.get('source_onnx')} is "
                                 "not here (neither beside the engine nor at that path, with its sha256); pass "
                                 "the ONNX to alexnet-export trt")
        recorded = rebuild_options(self.manifest)  # the same profile, DLA core and calibration data as before
        if "calib_dataset" in recorded and recorded["calib_dataset"] is None:
            if read_onnx_metadata(src).precision != "int8":  # calibrated at build time, on data not found again
                raise ModelLoadError(f"cannot rebuild {self.path.name} by itself: it was calibrated on "
                                     f"{self.manifest['build']['calibration'].get('dataset')}; run "
                                     f"{rebuild_command(self.manifest, self.path)}")
            del recorded["calib_dataset"]  # a QDQ ONNX carries its ranges
        self.rebuild(src, self.path, {"library": self.library, **recorded})
        self.manifest = read_manifest(self.path)

    # --------------------------------------------------------------------------------- lifecycle
    def activate_impl(self) -> None:
        lib, gpu = self.preflight()
        from alexnet_deploy.runtime import cuda

        trt = lib.module
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._trt_logger)
        self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ModelLoadError(f"{lib.name} {lib.version} could not deserialize {self.path.name}; rebuild: "
                                 f"{rebuild_command(self.manifest, self.path)}")
        self._context = self._engine.create_execution_context()
        self._in = self.manifest["input"]["name"]
        self._out = self.manifest["output"]["name"]
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
        c, h, w = self.metadata.input_dims
        n = self.max_batch
        self._stream = cuda.Stream()
        self._host_in, self._pin_in = cuda.pinned_empty((n, c, h, w), np.dtype(self.metadata.input_dtype))
        self._host_out, self._pin_out = cuda.pinned_empty((n, self.metadata.num_classes), self._out_dtype)
        self._d_in = cuda.DeviceBuffer(self._host_in.nbytes)
        self._d_out = cuda.DeviceBuffer(self._host_out.nbytes)
        self._context.set_tensor_address(self._in, self._d_in.ptr)
        self._context.set_tensor_address(self._out, self._d_out.ptr)
        self._graphs: dict[int, object] = {}
        self.provider = f"{lib.name} {lib.version} on {gpu['name']} (sm {gpu['compute_capability']})"

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        self._host_in[:n] = x
        self._context.set_input_shape(self._in, tuple(x.shape))
        if self.cuda_graph:
            self._launch_graph(n)
        else:
            self._enqueue(n)
        self._stream.synchronize()
        return self._host_out[:n].astype(np.float32, copy=True)

    def _enqueue(self, n: int, events=None) -> None:
        stream = int(self._stream.handle)
        record = (lambda i: events.record(i, self._stream)) if events else (lambda i: None)
        record(0)
        self._d_in.copy_from_host(self._host_in[:n], self._stream)
        record(1)
        if not self._context.execute_async_v3(stream):
            raise InferenceError("TensorRT execute_async_v3 failed")
        record(2)
        self._d_out.copy_to_host(self._host_out[:n], self._stream)
        record(3)

    def stage_times(self, x: np.ndarray) -> dict:
        """One inference timed by CUDA events: H2D, compute and D2H in ms (device-side)."""
        from alexnet_deploy.runtime.cuda import EventSet

        x = self.check_inputs(x)
        n = len(x)
        self._host_in[:n] = x
        self._context.set_input_shape(self._in, tuple(x.shape))
        events = EventSet(4)
        try:
            self._enqueue(n, events)
            self._stream.synchronize()
            h2d, compute, d2h = events.elapsed_ms()
        finally:
            events.destroy()
        return {"h2d_ms": h2d, "compute_ms": compute, "d2h_ms": d2h}

    def _launch_graph(self, n: int) -> None:
        """Capture H2D + execute + D2H once per batch size, then replay the graph."""
        from alexnet_deploy.runtime.cuda import check, cudart

        rt = cudart()
        graph_exec = self._graphs.get(n)
        if graph_exec is None:
            self._enqueue(n)  # TensorRT needs one regular launch after a shape change before capture
            self._stream.synchronize()
            check(rt.cudaStreamBeginCapture(self._stream.handle,
                                            rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._enqueue(n)
            graph = check(rt.cudaStreamEndCapture(self._stream.handle))
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0))
            self._graphs[n] = graph_exec
        check(rt.cudaGraphLaunch(graph_exec, self._stream.handle))

    def deactivate_impl(self) -> None:
        from alexnet_deploy.runtime import cuda

        for buf in (getattr(self, "_d_in", None), getattr(self, "_d_out", None)):
            if buf is not None:
                buf.free()
        for ptr in (getattr(self, "_pin_in", None), getattr(self, "_pin_out", None)):
            if ptr:
                cuda.free_pinned(ptr)
        if getattr(self, "_stream", None) is not None:
            self._stream.destroy()
        self._context = self._engine = None
