"""Write a Triton Inference Server model repository for an exported model (config.pbtxt + version folder),
so the same v2 clients keep working when users move from alexnet-serve to Triton or KServe."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from alexnet_deploy.errors import MetadataError, UserInputError
from alexnet_deploy.fileio import atomic_path, atomic_write_bytes
from alexnet_deploy.runtime.metadata import ModelMetadata


# A Triton model name is a folder of the repository: one path component, no "." / "..", nothing hidden.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UserInputError(f"--name {name!r}: a Triton model name is one folder name of letters, digits, "
                             "'_', '-' and '.', starting with a letter or digit (e.g. alexnet)")
    return name


def host_kind() -> str:
    """'gpu' when this host shows an NVIDIA GPU (nvidia-smi lists one and CUDA_VISIBLE_DEVICES does not hide
    it), else 'cpu': a KIND_GPU instance group makes tritonserver refuse the model on a CPU-only host."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return "cpu"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "cpu"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return "gpu" if out.returncode == 0 and "GPU " in out.stdout else "cpu"


def config_pbtxt(name: str, meta: ModelMetadata, platform: str, max_batch: int, instances: int, kind: str,
                 preferred: list[int], max_queue_delay_us: int, input_name: str, output_name: str) -> str:
    dims = ", ".join(map(str, meta.input_dims))  # H, W, 3 for a uint8-nhwc model
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f'    name: "{input_name}"',
        f"    data_type: {'TYPE_UINT8' if meta.input_dtype == 'uint8' else 'TYPE_FP32'}",
        f"    dims: [ {dims} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{output_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {meta.num_classes} ]",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
        "dynamic_batching {",
        *([f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"] if preferred else []),
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}",
        "  }",
        "]",
        "parameters {",
        '  key: "alexnet_deploy.variant"',
        f'  value: {{ string_value: "{meta.variant}" }}',
        "}",
    ]
    return "\n".join(lines) + "\n"


def _check_contract(model: Path, meta: ModelMetadata) -> None:
    from alexnet_deploy.runtime.runners.base import check_model_contract, session_io
    from alexnet_deploy.runtime.runners.factory import onnx_io

    io = onnx_io(model)
    if io is None:  # no onnx package: ONNX Runtime reads the graph's inputs and outputs
        import onnxruntime as ort

        from alexnet_deploy.fileio import native_path_or_bytes

        try:
            io = session_io(ort.InferenceSession(native_path_or_bytes(model), providers=["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            raise UserInputError(f"ONNX Runtime cannot load {model}: {str(exc).splitlines()[0][:200]}") from None
    check_model_contract(*io, meta, str(model))


def external_data_files(model: Path) -> list[str]:
    """The external data files an ONNX model's tensors point to, relative to its folder (checked to exist there).
    Triton loads them from beside model.onnx, so they are copied with it."""
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    except ImportError:
        return []
    proto = onnx.load(str(model), load_external_data=False)
    found: list[str] = []
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if not uses_external_data(t):
            continue
        rel = ExternalDataInfo(t).location
        target = (model.parent / rel).resolve()
        if Path(rel).is_absolute() or model.parent.resolve() not in target.parents:
            raise UserInputError(f"{model.name}: tensor {t.name!r} keeps its data outside the model's folder ({rel}); "
                                 "re-save the model with its data beside it")
        if not target.is_file():
            raise UserInputError(f"{model.name}: tensor {t.name!r} keeps its data in {rel}, which is missing")
        if rel not in found:
            found.append(rel)
    return found


def config_json(name: str, meta: ModelMetadata, platform: str, max_batch: int, max_queue_delay_ms: float,
                kind: str = "cpu") -> dict:
    """GET /v2/models/{m}/config (Triton's model configuration extension): the ModelConfig that
    ``config_pbtxt`` writes for Triton, as JSON (field names of model_config.proto), for perf_analyzer and
    Triton tooling that read it from a running server."""
    return {
        "name": name, "platform": platform, "max_batch_size": max_batch,
        "input": [{"name": meta.input_name, "data_type": "TYPE_UINT8" if meta.input_dtype == "uint8" else "TYPE_FP32",
                   "format": "FORMAT_NONE", "dims": list(meta.input_dims)}],
        "output": [{"name": meta.output_name, "data_type": "TYPE_FP32", "dims": [meta.num_classes],
                    "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(round(max_queue_delay_ms * 1000))},
        "instance_group": [{"name": f"{name}_0", "count": 1, "kind": "KIND_GPU" if kind == "gpu" else "KIND_CPU"}],
        "parameters": {"alexnet_deploy.variant": {"string_value": meta.variant},
                       "alexnet_deploy.precision": {"string_value": meta.precision}},
    }


def export_triton(model: str | Path, repo: str | Path, *, name: str = "alexnet", max_batch: int = 32,
                  instances: int = 1, kind: str | None = None, preferred: list[int] | None = None,
                  max_queue_delay_us: int = 2000, version: int = 1) -> Path:
    """``kind`` None: GPU for a TensorRT plan, else what this host has (``host_kind``)."""
    model, repo = Path(model), Path(repo)
    check_model_name(name)
    if not model.is_file():
        raise UserInputError(f"model not found: {model}")
    if max_batch < 1 or instances < 1 or version < 1:
        raise UserInputError("--max-batch, --instances and the version must be at least 1")
    if kind not in (None, "cpu", "gpu"):
        raise UserInputError("--kind must be cpu or gpu")
    preferred = sorted(set(preferred or []))
    if any(p < 1 or p > max_batch for p in preferred):
        raise UserInputError(f"preferred batch sizes must lie in 1..{max_batch}")
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        from alexnet_deploy.runtime.metadata import read_onnx_metadata

        try:
            meta = read_onnx_metadata(model)
        except MetadataError:
            raise UserInputError(f"{model.name} has no alexnet-deploy metadata (class names, input size), which the "
                                 "Triton config needs; export it with alexnet-export onnx") from None
        platform, filename = "onnxruntime_onnx", "model.onnx"
        _check_contract(model, meta)  # the config below describes one input and one [N, C] output
        in_name, out_name = meta.input_name, meta.output_name
        data_files = external_data_files(model)
        if meta.batch is not None:
            raise UserInputError(f"{model.name} has a static batch of {meta.batch}; Triton's dynamic batching "
                                 "needs a dynamic-batch export (alexnet-export onnx without --batch)")
    elif suffix in (".plan", ".engine"):
        from alexnet_deploy.runtime.trt_library import read_manifest

        manifest = read_manifest(model)
        meta = ModelMetadata.from_props(manifest["metadata"], str(model))
        platform, filename = "tensorrt_plan", "model.plan"
        in_name, out_name = manifest["input"]["name"], manifest["output"]["name"]
        if max_batch > manifest["build"]["profile"]["max"]:
            raise UserInputError(f"--max-batch {max_batch} exceeds the engine's profile "
                                 f"(max {manifest['build']['profile']['max']})")
        data_files = []
    else:
        raise UserInputError(f"{model.name}: Triton export takes an .onnx model or a .plan engine")
    if platform == "tensorrt_plan":
        if kind == "cpu":
            raise UserInputError("a TensorRT plan runs on a GPU only; leave out --kind or give --kind gpu")
        kind = "gpu"
    kind = kind or host_kind()
    root = repo / name
    (root / str(version)).mkdir(parents=True, exist_ok=True)
    for rel in data_files:  # external weights first: the model file never sits there without them
        dst = root / str(version) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(model.parent / rel, tmp)
    with atomic_path(root / str(version) / filename) as tmp:
        shutil.copyfile(model, tmp)
    atomic_write_bytes(root / "labels.txt", ("\n".join(meta.class_names) + "\n").encode())
    atomic_write_bytes(root / "config.pbtxt", config_pbtxt(name, meta, platform, max_batch, instances, kind,
                                                           preferred, max_queue_delay_us, in_name, out_name).encode())
    return root
