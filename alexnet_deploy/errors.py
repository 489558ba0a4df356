"""Typed errors. The CLI turns every ``AlexnetDeployError`` into one line on stderr and a non-zero exit."""
from __future__ import annotations


class AlexnetDeployError(Exception):
    """Base class of every error this toolkit raises on purpose (bad input, missing files, failed checks)."""

    exit_code = 2


class UserInputError(AlexnetDeployError):
    """Something the user passed is wrong: a name, a path, an option value."""


class MissingDependencyError(AlexnetDeployError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, pip: str, purpose: str = ""):
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{module} is not installed{what}; install it with: pip install {pip}")
        self.module = module
        self.pip = pip


class ModelLoadError(AlexnetDeployError):
    """A checkpoint, ONNX model or engine cannot be read or does not match what was asked."""


class MetadataError(AlexnetDeployError):
    """A model file lacks the alexnet-deploy metadata a stage needs."""


class ExportError(AlexnetDeployError):
    """torch.onnx / onnxsim / onnx.checker failed."""


class ParityError(AlexnetDeployError):
    """A candidate model disagrees with the PyTorch reference beyond tolerance."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class KernelMismatchError(AlexnetDeployError):
    """A model gives other results on this host's integer kernels than its exact math (e.g. int16 saturation)."""

    exit_code = 1


class DatasetError(AlexnetDeployError):
    """A dataset folder or file is missing, empty or malformed."""


class InferenceError(AlexnetDeployError):
    """Inputs do not match a runner's model (names, shapes, dtypes) or the runner failed."""


class EngineBuildError(AlexnetDeployError):
    """TensorRT could not parse the ONNX model or build an engine."""


class OutputWriteError(AlexnetDeployError, OSError):
    """A file could not be written (disk full, quota, file too large); the message names the file and the cause.

    Also an ``OSError`` (errno and filename kept), so code that catches OSError around a write still does."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None):
        OSError.__init__(self, errno, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message
