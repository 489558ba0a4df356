"""alexnet-deploy: PyTorch AlexNet -> verified ONNX / TensorRT deployments.

Importing this package is cheap and needs neither torch nor any optional dependency. The public Python API
below is imported lazily, on first attribute access (PEP 562 module ``__getattr__``), from the stage that owns
it; see docs/python-api.md:

- :func:`open_runner` (``runtime.runners.factory``): a runner for an ONNX model or engine (torch-free).
- :func:`load_image` (``runtime.preprocess``): an image file or bytes as RGB, size-checked before decoding.
- :func:`model_batch` (``runtime.preprocess``): images -> the input array a model's metadata asks for.
- :func:`topk` (``runtime.postprocess``): the best classes per row.
- :func:`load_model` (``models.weights``): a variant + weights (``random``, ``imagenet`` or a file); needs torch.
- :func:`export_onnx` (``exporter.onnx_export``): a loaded model -> verified ONNX (with :class:`ExportOptions`).
- :func:`calibrate` (``calibration.run``): FP32 ONNX -> QDQ INT8 ONNX.
- :func:`run_deploy` (``deploy.run``): a checkpoint -> a verified deployment folder (with
  :class:`DeployOptions`). Not ``deploy``: ``alexnet_deploy.deploy`` is the sub-package, and importing it
  would replace a top-level ``deploy`` function with the module.
- :func:`verify` (``parity.verify``): a deployment folder against its golden set, on this machine.
"""
from __future__ import annotations

import importlib

from alexnet_deploy.errors import AlexnetDeployError


def _version() -> str:
    """The installed distribution's version (one source of truth: pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alexnet-deploy")
    except PackageNotFoundError:  # imported from a source tree that is not installed
        return "0.0.0+unknown"


__version__ = _version()

# public name -> (module, attribute): imported on first use, so `import alexnet_deploy` stays light
_LAZY = {
    "open_runner": ("alexnet_deploy.runtime.runners.factory", "open_runner"),
    "load_image": ("alexnet_deploy.runtime.preprocess", "load_image"),
    "model_batch": ("alexnet_deploy.runtime.preprocess", "model_batch"),
    "topk": ("alexnet_deploy.runtime.postprocess", "topk"),
    "load_model": ("alexnet_deploy.models.weights", "load_model"),
    "export_onnx": ("alexnet_deploy.exporter.onnx_export", "export_onnx"),
    "ExportOptions": ("alexnet_deploy.exporter.onnx_export", "ExportOptions"),
    "calibrate": ("alexnet_deploy.calibration.run", "calibrate"),
    "run_deploy": ("alexnet_deploy.deploy.run", "run_deploy"),
    "DeployOptions": ("alexnet_deploy.deploy.plan", "DeployOptions"),
    "verify": ("alexnet_deploy.parity.verify", "verify"),
}

__all__ = ["AlexnetDeployError", "__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'alexnet_deploy' has no attribute {name!r}") from None
    try:
        value = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:  # e.g. load_model without torch: one line naming the pip command
        from alexnet_deploy.deps import missing_module_error

        err = missing_module_error(exc)
        if err is None:
            raise
        raise err from None
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
