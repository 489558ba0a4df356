"""The engine builder that ``--rebuild-if-stale`` runs, for the runtime's TensorRT runner to call.

The runtime never imports the exporter: ``TensorRTRunner(rebuild=...)`` takes any callable
``rebuild(onnx_path, engine_path, options)`` (``options``: the ``TrtBuildOptions`` keywords recorded in the
stale engine's manifest), and the layer above it (the CLI, ``parity.api.check_parity``) passes this one. It
imports the builder (and onnx) only when an engine is actually rebuilt."""
from __future__ import annotations


def rebuild_engine(onnx_path, engine_path, options: dict):
    """Build ``engine_path`` again from ``onnx_path`` with ``options``; returns the ``BuildResult``."""
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine

    return build_engine(onnx_path, engine_path, TrtBuildOptions(**options))
