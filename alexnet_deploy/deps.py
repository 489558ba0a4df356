"""Lazy imports of optional dependencies, each failing with one line that names the pip command."""
from __future__ import annotations

import importlib
from types import ModuleType

from alexnet_deploy.errors import MissingDependencyError

# module -> (pip requirement, what it is for)
OPTIONAL = {
    "torch": ("torch torchvision", "PyTorch models, training and the reference runner"),
    "torchvision": ("torchvision", "torchvision's AlexNet and its weights"),
    "onnx": ("onnx", "reading and writing ONNX models"),
    "onnxruntime": ("onnxruntime  (or onnxruntime-gpu for CUDA/TensorRT)", "ONNX Runtime inference"),
    "onnxsim": ("onnxsim", "ONNX simplification"),
    "safetensors": ("safetensors", ".safetensors weights"),
    "sklearn": ("scikit-learn", "the embedded digits dataset"),
    "tqdm": ("tqdm", "progress bars"),
    "tensorrt": ("tensorrt", "TensorRT engines"),
    "tensorrt_rtx": ("tensorrt-rtx", "TensorRT-RTX engines"),
    "cuda": ("cuda-python", "device memory for the TensorRT runner"),
    "matplotlib": ("matplotlib  (or alexnet-deploy[plot])", "plots"),
    "fastapi": ("'alexnet-deploy[serve]'", "the inference server"),
    "uvicorn": ("'alexnet-deploy[serve]'", "the inference server"),
    "prometheus_client": ("prometheus-client", "server metrics"),
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


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
