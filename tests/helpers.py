"""Small builders and checks shared by test modules (tests/ is on sys.path: the rootdir conftest, no package)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

FACES = ["face", "nonface"]


def foreign_onnx(path: Path, four_d: bool) -> Path:
    """No alexnet-deploy metadata; output (N, 3, 32, 32) or (N, 3) instead of (N, 10)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    if four_d:
        node = helper.make_node("Identity", ["input"], ["out"])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])
    else:
        node = helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(helper.make_graph([node], "foreign", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h pixels (a decompression bomb costs nothing to make this way)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# tiny and fixed: a handful of timed runs per row, small calibration and parity sets
FAST = dict(batch_sizes=(1, 4), bench_iterations=3, bench_duration_s=None, bench_warmup_ms=0.0, roofline=False,
            parity_images=120, random_samples=4, calib_images=32)


def deploy_opts(ckpt: Path, out: Path, **kw):
    """A small deploy on the digits dataset (FAST settings); keywords override."""
    from alexnet_deploy.deploy.plan import DeployOptions

    return DeployOptions(weights=ckpt, out=out, dataset="digits", **{**FAST, **kw})


def statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["steps"]}


def make_model(path: Path, kind: str = "good", external: bool = False) -> Path:
    """A tiny graph built with onnx.helper (no torch) carrying alexnet-deploy metadata: "good" (one image input,
    one [N, 10] output), "two-inputs" or "nc11" (an [N, 10, 1, 1] output)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from alexnet_deploy.runtime.metadata import ModelMetadata, set_metadata

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 10)).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])]
    if kind == "two-inputs":
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 3]))
        nodes.append(helper.make_node("Add", ["pooled", "bias"], ["pooled2"]))
        nodes.append(helper.make_node("MatMul", ["pooled2", "w"], ["logits"]))
        out_shape = ["N", 10]
    elif kind == "nc11":
        nodes.append(helper.make_node("MatMul", ["pooled", "w"], ["flat"]))
        shape = numpy_helper.from_array(np.array([-1, 10, 1, 1], np.int64), "shape")
        nodes.append(helper.make_node("Reshape", ["flat", "shape"], ["logits"]))
        out_shape = ["N", 10, 1, 1]
    else:
        nodes.append(helper.make_node("MatMul", ["pooled", "w"], ["logits"]))
        out_shape = ["N", 10]
    inits = [w] + ([shape] if kind == "nc11" else [])
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata.defaults_for("cifar10", 10)
    meta.source_weights = "test graph"
    set_metadata(model, meta)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def fake_plan(path: Path, onnx_path: Path, library: str = "tensorrt_rtx", version: str = "1.7.1",
              max_batch: int = 4) -> Path:
    """Bytes standing for a serialized engine of ``onnx_path`` (make_model's), with the manifest fields
    exporter/tensorrt.py writes that the Triton export reads: for tests that move engines, not build them."""
    from alexnet_deploy.fileio import atomic_write_json, sha256_bytes
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.trt_library import MANIFEST_SCHEMA, manifest_path

    data = b"FAKE-PLAN" * 100
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    meta = read_onnx_metadata(onnx_path)
    atomic_write_json(manifest_path(path), {
        "schema": MANIFEST_SCHEMA, "engine_sha256": sha256_bytes(data), "engine_bytes": len(data),
        "library": {"name": library, "version": version, "strongly_typed": True}, "gpu": None,
        "target_compute_capability": "sm86", "precision": meta.precision, "precision_path": "fp32",
        "source_onnx": str(onnx_path), "input": {"name": meta.input_name, "shape": [-1, *meta.input_dims]},
        "output": {"name": meta.output_name}, "build": {"profile": {"min": 1, "opt": max_batch, "max": max_batch}},
        "metadata": meta.to_props()})
    return path


# --- KServe / Kubernetes manifests, checked against the real schemas and alexnet-serve's real CLI ---------------
ROOT = Path(__file__).resolve().parents[1]
KSERVE_SCHEMA = ROOT / "tests" / "data" / "kserve_inferenceservice_v1beta1.schema.json.gz"


def kserve_schema() -> dict:
    """KServe's own InferenceService CRD schema (tests/data, extracted from kserve's config/crd/full)."""
    import gzip
    import json

    return json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes()))


def unknown_fields(doc, schema: dict, where: str = "") -> list[str]:
    """Fields KServe's structural schema does not declare (the API server would prune them silently)."""
    if isinstance(doc, list):
        return [u for i, x in enumerate(doc) for u in unknown_fields(x, schema.get("items", {}), f"{where}[{i}]")]
    if not isinstance(doc, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props = schema.get("properties")
    if props is None:
        extra = schema.get("additionalProperties")
        return ([u for k, v in doc.items() for u in unknown_fields(v, extra, f"{where}.{k}")]
                if isinstance(extra, dict) else [])
    return [u for k, v in doc.items()
            for u in ([f"{where}.{k}"] if k not in props else unknown_fields(v, props[k], f"{where}.{k}"))]


def serve_params(args: list[str]) -> dict:
    """A container's alexnet-serve arguments parsed by the real CLI's parser (an unknown option fails here)."""
    from alexnet_deploy.cli.serve import serve_cmd

    return serve_cmd.make_context("alexnet-serve", list(args)).params


def serve_routes() -> set[str]:
    """The HTTP routes alexnet-serve really has (the probes in the manifests must name them)."""
    import pytest

    pytest.importorskip("fastapi")
    from alexnet_deploy.runtime.metadata import ModelMetadata
    from alexnet_deploy.server.app import create_app

    class Fake:
        metadata = ModelMetadata.defaults_for("cifar10")
        engine, max_batch, min_batch = "ort", None, None

    return {getattr(r, "path", "") for r in create_app(Fake()).routes}


def blocked_imports(modules) -> str:
    """Python source that makes importing any of ``modules`` (top-level names) fail as a missing package does:
    prepend it to a ``python -c`` script to run code as on a machine without them."""
    import textwrap

    return textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(modules)!r}:
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
        sys.meta_path.insert(0, Block())
    """)


class SlowRunner:
    """Stands in for a runner that cannot keep up: every batch takes ``delay`` seconds (logits 0..9 per row);
    ``batches`` records the batch sizes it was given."""

    def __init__(self, delay: float):
        from alexnet_deploy.runtime.metadata import ModelMetadata

        self.metadata = ModelMetadata.defaults_for("cifar10")
        self.delay = delay
        self.batches: list[int] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def describe(self):
        return "slow fake runner"

    def infer_batches(self, x, batch_size):
        import time

        import numpy as np

        time.sleep(self.delay)
        self.batches.append(len(x))
        return np.tile(np.arange(10, dtype=np.float32), (len(x), 1))


def mounted_tmpfs(path: Path, options: str):
    """A context manager: a tmpfs mounted at ``path`` (created) with mount ``options`` ("size=48m", "ro,size=64k"),
    unmounted after; skips the test where mounting is not possible (needs root with CAP_SYS_ADMIN)."""
    import contextlib
    import os
    import shutil
    import subprocess

    import pytest

    @contextlib.contextmanager
    def mounted():
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        path.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                               text=True)
        except OSError as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)

    return mounted()
