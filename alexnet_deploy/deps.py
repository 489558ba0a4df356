"""Lazy imports of optional dependencies, each failing with one line that names the pip command."""
from __future__ import annotations

import importlib
from types import ModuleType

from alexnet_deploy.errors import MissingDependencyError

# module -> (pip requirement, what it is for)
OPTIONAL = {
    "torch": ("'alexnet-deploy[export]'", "PyTorch models, training, export and the reference runner"),
    "torchvision": ("'alexnet-deploy[export]'", "torchvision's AlexNet and its weights"),
    "onnx": ("'alexnet-deploy[build]' (engine builds, no PyTorch) or 'alexnet-deploy[export]' (export from PyTorch)", "reading and writing ONNX models"),
    "onnxruntime": ("onnxruntime  (or onnxruntime-gpu for CUDA/TensorRT)", "ONNX Runtime inference"),
    "onnxsim": ("'alexnet-deploy[export]'", "ONNX simplification"),
    "safetensors": ("'alexnet-deploy[export]'", ".safetensors weights"),
    "sklearn": ("scikit-learn  (part of alexnet-deploy[export])", "the embedded digits dataset"),
    "tqdm": ("tqdm", "progress bars"),
    "tensorrt": ("tensorrt", "TensorRT engines"),
    "tensorrt_rtx": ("tensorrt-rtx", "TensorRT-RTX engines"),
    "cuda": ("cuda-python", "device memory for the TensorRT runner"),
    "matplotlib": ("matplotlib  (or alexnet-deploy[plot])", "plots"),
    "fastapi": ("'alexnet-deploy[serve]'", "the inference server"),
    "uvicorn": ("'alexnet-deploy[serve]'", "the inference server"),
    "prometheus_client": ("prometheus-client", "server metrics"),
    "httptools": ("'alexnet-deploy[serve]'", "alexnet-serve --http-parser httptools"),
    "uvloop": ("'alexnet-deploy[serve]'", "alexnet-serve --loop uvloop"),
    "av": ("'alexnet-deploy[stream]'", "video files, cameras and network streams"),
}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the module is there but one of *its* imports is broken: show the real error
        pip, default_purpose = OPTIONAL.get(top, (top, ""))
        raise MissingDependencyError(module, pip, purpose or default_purpose) from None


def missing_module_error(exc: ModuleNotFoundError) -> MissingDependencyError | None:
    """The one-line error for an ImportError of an optional dependency (None for anything else)."""
    top = (exc.name or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    pip, purpose = OPTIONAL[top]
    return MissingDependencyError(top, pip, purpose)


