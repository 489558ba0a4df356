"""ONNX Runtime runner: CPU, CUDA or TensorRT execution provider, chosen explicitly, never a silent fallback."""
from __future__ import annotations

import os

import numpy as np

from alexnet_deploy.deps import require
from alexnet_deploy.errors import InferenceError, MissingDependencyError, ModelLoadError
from alexnet_deploy.fileio import native_path_or_bytes, printable_path
from alexnet_deploy.runtime.engines import ONNX_ENGINES, ORT_PROVIDER_CLASSES, ORT_PROVIDERS
from alexnet_deploy.runtime.metadata import ModelMetadata
from alexnet_deploy.runtime.runners.base import Runner, TensorSpec

# provider -> ONNX Runtime provider class ({"cpu": "CPUExecutionProvider", ...}), from the engine names' maps
PROVIDERS = {ORT_PROVIDERS[e]: ORT_PROVIDER_CLASSES[e] for e in ONNX_ENGINES}
_ENGINE_OF = {p: e for e, p in ORT_PROVIDERS.items()}  # "tensorrt" -> "ort-trt"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8}  # uint8: raw-pixel models (--input-format uint8-nhwc)


class OrtRunner(Runner):
    engine = "ort"

    def __init__(self, path, metadata: ModelMetadata, provider: str = "cpu", threads: int | None = None,
                 provider_options: dict | None = None, exact_qdq: bool = False,
                 session_config: dict[str, str] | None = None):
        super().__init__(metadata)
        if provider not in PROVIDERS:
            raise InferenceError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        self.path = os.fspath(path)
        self.requested = provider
        self.threads = threads
        self.provider_options = provider_options or {}
        # exact_qdq: no graph optimizations, so QuantizeLinear/DequantizeLinear run as the float ops they define
        # (the exact INT8 math, on every CPU) instead of being fused into the host's integer kernels
        self.exact_qdq = exact_qdq
        self.session_config = dict(session_config or {})  # SessionOptions config entries (alexnet-serve: no spinning)
        self.engine = _ENGINE_OF[provider]
        self.session = None

    def activate_impl(self) -> None:
        ort = require("onnxruntime")
        wanted = PROVIDERS[self.requested]
        if self.requested != "cpu" and hasattr(ort, "preload_dlls"):
            try:  # onnxruntime-gpu finds CUDA/cuDNN from the pip nvidia packages this way
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - best effort; the provider check below decides
                pass
        available = ort.get_available_providers()
        if wanted not in available:
            raise MissingDependencyError(
                f"{wanted} (this onnxruntime has only {', '.join(available)})",
                "onnxruntime-gpu", f"the {self.engine} engine",
            )
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.log_severity_level = 3
        for key, value in self.session_config.items():
            so.add_session_config_entry(key, value)
        if self.exact_qdq:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = [(wanted, self.provider_options)]
        if self.requested != "cpu":  # nodes the GPU provider lacks may run on CPU; the main provider is checked
            providers.append(("CPUExecutionProvider", {}))
        try:
            # a path that is not valid UTF-8 cannot reach ORT's C++ constructor: hand it the bytes instead
            self.session = ort.InferenceSession(native_path_or_bytes(self.path), sess_options=so,
                                                providers=providers)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {printable_path(self.path)}: {exc.strerror}") from None
        except Exception as exc:  # ORT raises its own exception types
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"ONNX Runtime cannot load {printable_path(self.path)}: {msg}") from None
        used = self.session.get_providers()
        if used[0] != wanted:
            raise InferenceError(f"ONNX Runtime fell back to {used[0]} instead of {wanted}; refusing to run")
        self.provider = used[0]
        inp = self.session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.input_spec = TensorSpec(inp.name, shape, np.dtype(_DTYPES.get(inp.type, np.float32)))
        if shape and shape[0] is not None:
            self.min_batch = self.max_batch = shape[0]
        outputs = self.session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.check_output_shape(list(outputs[0].shape), printable_path(self.path))

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(self.output_names[:1], {self.input_spec.name: x})[0]
        except Exception as exc:  # noqa: BLE001
            raise InferenceError(f"ONNX Runtime failed: {str(exc).splitlines()[0][:300]}") from None

    def deactivate_impl(self) -> None:
        self.session = None
