"""The PyTorch reference runner (CPU, or CUDA where present). The only runner that needs torch."""
from __future__ import annotations

import numpy as np

from alexnet_deploy.errors import InferenceError
from alexnet_deploy.runtime.metadata import ModelMetadata
from alexnet_deploy.runtime.runners.base import Runner, TensorSpec


def metadata_of(loaded) -> ModelMetadata:
    """ModelMetadata of a :class:`~alexnet_deploy.models.weights.LoadedModel`."""
    return ModelMetadata(
        variant=loaded.variant, class_names=list(loaded.class_names), preprocessing=loaded.preprocessing,
        output_kind="probabilities" if loaded.softmax else "logits",
        source_weights=loaded.source, source_sha256=loaded.source_sha256,
        training_dataset=str(loaded.info.get("dataset", "")),
    )


class TorchRunner(Runner):
    engine = "torch"

    def __init__(self, loaded, device: str = "cpu", threads: int | None = None):
        super().__init__(metadata_of(loaded))
        self.loaded = loaded
        self.device = device
        self.threads = threads
        self.engine = "torch" if device == "cpu" else f"torch-{device}"

    def activate_impl(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InferenceError("torch-cuda needs a CUDA GPU, and torch sees none here")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.model = self.loaded.model.to(self.device).eval()
        self.provider = f"torch {torch.__version__} {self.device}"
        self.input_spec = TensorSpec("input", (None, *self.metadata.input_shape), np.dtype(np.float32))

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.model = None
