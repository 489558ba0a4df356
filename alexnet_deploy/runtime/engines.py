"""The engine names, defined once, grouped by what they run. Every other module (the runner factory, the deploy
plan, alexnet-verify and the CLI choices) imports them from here.

Plain strings and tuples only: the torch engine names live here as names, and nothing here imports torch,
onnxruntime or tensorrt (``runtime/`` stays importable on a torch-free target).
"""
from __future__ import annotations

TORCH_ENGINES = ("torch", "torch-cuda")  # PyTorch eager on a checkpoint (the reference)
ONNX_ENGINES = ("ort", "ort-cuda", "ort-trt")  # ONNX Runtime on an ONNX file, by execution provider
TENSORRT_ENGINES = ("trt",)  # a serialized TensorRT / TensorRT-RTX engine
ENGINES = (*TORCH_ENGINES, *ONNX_ENGINES, *TENSORRT_ENGINES)
EXPORTED_ENGINES = (*ONNX_ENGINES, *TENSORRT_ENGINES)  # what runs an exported model (no torch): alexnet-verify
GPU_ENGINES = ("torch-cuda", "ort-cuda", "ort-trt", "trt")  # the ones that need a CUDA GPU (Triton KIND_GPU)

# the kind of model file each group runs (runners/factory.py's model_kind names them by suffix)
MODEL_KINDS = {**dict.fromkeys(TORCH_ENGINES, "checkpoint"), **dict.fromkeys(ONNX_ENGINES, "onnx"),
               **dict.fromkeys(TENSORRT_ENGINES, "engine")}
DESCRIPTIONS = {
    "torch": "PyTorch eager on the CPU (the reference)",
    "torch-cuda": "PyTorch eager on a CUDA GPU",
    "ort": "ONNX Runtime, CPU execution provider",
    "ort-cuda": "ONNX Runtime, CUDA execution provider",
    "ort-trt": "ONNX Runtime, TensorRT execution provider",
    "trt": "a serialized TensorRT / TensorRT-RTX engine",
}
ORT_PROVIDERS = {"ort": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}  # engine -> runners/ort.py provider
# engine -> the ONNX Runtime execution provider class it runs on (as onnxruntime.get_available_providers() names it)
ORT_PROVIDER_CLASSES = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                        "ort-trt": "TensorrtExecutionProvider"}

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")  # serialized TensorRT engines
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")

__all__ = ["TORCH_ENGINES", "ONNX_ENGINES", "TENSORRT_ENGINES", "ENGINES", "EXPORTED_ENGINES", "GPU_ENGINES",
           "MODEL_KINDS", "DESCRIPTIONS", "ORT_PROVIDERS", "ORT_PROVIDER_CLASSES", "ONNX_SUFFIXES", "ENGINE_SUFFIXES",
           "CHECKPOINT_SUFFIXES"]
