"""Runners: torch (reference), onnxruntime (cpu/cuda/tensorrt EP), tensorrt engines; see :func:`open_runner`."""
from alexnet_deploy.runtime.runners.base import Runner, TensorSpec
from alexnet_deploy.runtime.runners.factory import ENGINES, open_runner

__all__ = ["Runner", "TensorSpec", "ENGINES", "open_runner"]
