"""TensorRT engine runner (selection and interface; the execution path arrives with the TensorRT issue)."""
from __future__ import annotations

from alexnet_deploy.errors import ModelLoadError
from alexnet_deploy.runtime.runners.base import Runner


class TensorRTRunner(Runner):
    engine = "trt"

    def __init__(self, path, **options):
        raise ModelLoadError(f"running TensorRT engines ({path}) is not implemented yet in this version")
