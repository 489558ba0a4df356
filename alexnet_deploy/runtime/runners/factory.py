"""Pick a runner from a model path and an engine name."""
from __future__ import annotations

import os
from pathlib import Path

from alexnet_deploy.errors import ModelLoadError, UserInputError
from alexnet_deploy.runtime import engines as _engines
from alexnet_deploy.runtime.engines import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, ONNX_SUFFIXES, ORT_PROVIDERS
from alexnet_deploy.runtime.metadata import read_onnx_metadata

# engine -> (kind of model file it runs, description); the names are runtime/engines.py's
ENGINES = {e: (_engines.MODEL_KINDS[e], _engines.DESCRIPTIONS[e]) for e in _engines.ENGINES}


def model_kind(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise UserInputError(
        f"cannot tell what {path} is from its suffix; expected .onnx, .plan/.engine or .pt/.pth/.safetensors"
    )


def default_engine(path) -> str:
    return {"onnx": "ort", "engine": "trt", "checkpoint": "torch"}[model_kind(path)]


def onnx_io(path: str | os.PathLike):
    """The graph inputs (initializers excluded) and outputs of an ONNX file as TensorSpecs, read with onnx without
    its weights; None when onnx is not installed (runtime-only installs: the runner checks at activation)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return None
    import numpy as np

    from alexnet_deploy.runtime.runners.base import TensorSpec

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except FileNotFoundError:
        raise ModelLoadError(f"model not found: {path}") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    weights = {t.name for t in graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        except Exception:  # noqa: BLE001 - an element type numpy has no dtype for
            dtype = np.dtype("O")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        return TensorSpec(v.name, shape, dtype)

    return [spec(v) for v in graph.input if v.name not in weights], [spec(v) for v in graph.output]


def check_onnx_contract(path: str | os.PathLike, meta) -> None:
    """The model contract (runners.base.check_model_contract) of an ONNX file, before any work is done with it."""
    from alexnet_deploy.runtime.runners.base import check_model_contract

    io = onnx_io(path)
    if io is not None:
        check_model_contract(*io, meta, os.fspath(path))


def open_runner(path: str | os.PathLike, engine: str | None = None, *, variant: str | None = None,
                threads: int | None = None, rebuild_if_stale: bool = False, rebuild=None, **options):
    """A (not yet activated) runner for ``path``; ``variant`` supplies defaults for metadata-less ONNX.
    ``rebuild``: the engine builder a stale TensorRT engine is rebuilt with under ``rebuild_if_stale``
    (see runners/tensorrt.py; the runtime never imports the exporter, the caller wires one in)."""
    if not Path(path).is_file():
        raise ModelLoadError(f"model not found: {path}")
    engine = engine or default_engine(path)
    if engine not in ENGINES:
        raise UserInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    kind = model_kind(path)
    if ENGINES[engine][0] != kind:
        raise UserInputError(f"engine {engine!r} runs {ENGINES[engine][0]} files, but {path} is a {kind} file")
    if kind == "onnx":
        from alexnet_deploy.runtime.runners.ort import OrtRunner

        provider = ORT_PROVIDERS[engine]
        meta = read_onnx_metadata(path, variant)
        check_onnx_contract(path, meta)  # one line now, not ONNX Runtime's message at the first inference
        return OrtRunner(path, meta, provider=provider, threads=threads, **options)
    if kind == "engine":
        from alexnet_deploy.runtime.runners.tensorrt import TensorRTRunner

        return TensorRTRunner(path, rebuild_if_stale=rebuild_if_stale, rebuild=rebuild, **options)
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.runners.torch_runner import TorchRunner

    loaded = load_model(variant, str(path))
    return TorchRunner(loaded, device="cuda" if engine == "torch-cuda" else "cpu", threads=threads)
