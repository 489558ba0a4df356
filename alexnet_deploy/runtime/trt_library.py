"""Which TensorRT is installed (``tensorrt`` 8.x-11.x or ``tensorrt_rtx``), its version and its typing
model, and the engine manifest written next to every engine. No torch."""
from __future__ import annotations

import importlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.errors import MissingDependencyError, ModelLoadError, UserInputError

LIBRARIES = ("tensorrt", "tensorrt_rtx")
MANIFEST_SCHEMA = "alexnet-deploy.engine-manifest/1"


@dataclass
class TrtLibrary:
    name: str
    module: object
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 and TensorRT-RTX take precisions from the ONNX types (FP16 ONNX, QDQ INT8)."""
        return self.name == "tensorrt_rtx" or self.major >= 11

    @property
    def has_calibrators(self) -> bool:
        return hasattr(self.module, "IInt8EntropyCalibrator2") and not self.strongly_typed


def load_library(choice: str = "auto") -> TrtLibrary:
    if choice not in ("auto", *LIBRARIES, "tensorrt-rtx"):
        raise UserInputError(f"unknown --library {choice!r}; choose auto, tensorrt or tensorrt_rtx")
    choice = "tensorrt_rtx" if choice == "tensorrt-rtx" else choice
    names = LIBRARIES if choice == "auto" else (choice,)
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        return TrtLibrary(name, mod, mod.__version__)
    pip = "tensorrt-rtx" if choice == "tensorrt_rtx" else ("tensorrt" if choice == "tensorrt" else "tensorrt  (or tensorrt-rtx)")
    raise MissingDependencyError(choice if choice != "auto" else "TensorRT (tensorrt or tensorrt_rtx)", pip,
                                 "TensorRT engines")


def manifest_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".manifest.json")


def read_manifest(engine: str | os.PathLike) -> dict:
    path = manifest_path(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{engine} has no manifest ({path.name}); rebuild it with alexnet-export trt") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"manifest {path} is unreadable: {exc}") from None
    if data.get("schema") != MANIFEST_SCHEMA:
        raise ModelLoadError(f"{path} is not an alexnet-deploy engine manifest")
    return data


def jetson_release() -> str | None:
    try:
        with open("/etc/nv_tegra_release") as f:
            return f.readline().strip()
    except OSError:
        return None


def platform_info() -> dict:
    return {"system": platform.system(), "machine": platform.machine(), "python": platform.python_version(),
            "jetson_l4t": jetson_release()}


def gpu_properties() -> dict | None:
    """Name and compute capability of GPU 0 through cuda-python, or None without a GPU."""
    try:
        from alexnet_deploy.runtime.cuda import check, cudart, device_count

        if device_count() == 0:
            return None
        props = check(cudart().cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # noqa: BLE001 - no driver, no cuda-python: no GPU to record
        return None


def rebuild_command(manifest: dict, engine) -> str:
    b = manifest.get("build", {})
    parts = ["alexnet-export trt", manifest.get("source_onnx", "MODEL.onnx"), "-o", str(engine),
             "--precision", manifest.get("precision", "fp32")]
    prof = b.get("profile") or {}
    if prof and not b.get("static"):
        parts += ["--min-batch", str(prof["min"]), "--opt-batch", str(prof["opt"]), "--max-batch", str(prof["max"])]
    return " ".join(parts)


def check_compatible(manifest: dict, engine, lib: TrtLibrary, gpu: dict | None) -> list[str]:
    """Reasons why ``engine`` cannot run here (empty: it can)."""
    problems = []
    built = manifest.get("library", {})
    if built.get("name") != lib.name or built.get("version") != lib.version:
        if not (manifest.get("build", {}).get("version_compatible") and built.get("name") == lib.name):
            problems.append(f"built with {built.get('name')} {built.get('version')}, running {lib.name} {lib.version}")
    want_cc = (manifest.get("gpu") or {}).get("compute_capability")
    hw = manifest.get("build", {}).get("hardware_compatibility", "none")
    if gpu and want_cc and gpu["compute_capability"] != want_cc and hw == "none":
        problems.append(f"built for compute capability {want_cc} ({manifest['gpu'].get('name')}), "
                        f"this GPU is {gpu['compute_capability']} ({gpu['name']})")
    return problems
