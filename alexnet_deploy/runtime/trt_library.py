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


def source_onnx_path(manifest: dict, engine: str | os.PathLike) -> str | None:
    """The engine's source ONNX on this machine: relative to the engine's folder (a deploy folder copied to the
    target), then at the absolute path recorded at build time, then beside the engine by name; the first that
    exists and matches the recorded sha256. None if none does."""
    from alexnet_deploy.fileio import sha256_file

    here = Path(engine).resolve().parent
    recorded = manifest.get("source_onnx")
    candidates = [Path(os.path.normpath(here / rel)) for rel in [manifest.get("source_onnx_relative")]
                  if isinstance(rel, str) and rel]
    if isinstance(recorded, str) and recorded:
        candidates += [Path(recorded), here / Path(recorded).name]
    want = manifest.get("source_onnx_sha256")
    for path in dict.fromkeys(candidates):
        try:
            if path.is_file() and (not want or sha256_file(path) == want):
                return str(path)
        except OSError:
            continue
    return None


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


_SPLITS = (":train", ":heldout", ":all")


def rebuild_options(manifest: dict) -> dict:
    """How an engine was built, as ``TrtBuildOptions`` keywords read from its manifest, so that a rebuild
    (``--rebuild-if-stale``, or the printed command) makes the same engine: profile, workspace, DLA core,
    compatibility modes and, for INT8 calibrated at build time, the calibration data, count and method.
    ``calib_dataset`` is None when the recorded data cannot be found again (an .npy recorded by name only)."""
    b = manifest.get("build", {})
    opts = {"precision": manifest.get("precision", "fp32"), "workspace_mb": int(b.get("workspace_mb", 1024))}
    prof = b.get("profile") or {}
    if prof and not b.get("static"):
        opts.update(min_batch=int(prof["min"]), opt_batch=int(prof["opt"]), max_batch=int(prof["max"]))
    if b.get("dla_core") is not None:  # core 0 is a core
        opts["dla_core"] = int(b["dla_core"])
    if b.get("version_compatible"):
        opts["version_compatible"] = True
    if b.get("hardware_compatibility", "none") != "none":
        opts["hardware_compatibility"] = b["hardware_compatibility"]
    cal = b.get("calibration") or {}
    if opts["precision"] == "int8" and cal.get("dataset"):  # recorded as SOURCE:SPLIT by calibration.data
        name = str(cal["dataset"])
        source = next((name[: -len(s)] for s in _SPLITS if name.endswith(s)), None)
        opts["calib_dataset"] = source if source == "digits" or (source and os.path.exists(source)) else None
        if cal.get("num_images"):
            opts["calib_images"] = int(cal["num_images"])
        if cal.get("method") in ("entropy2", "minmax") and cal.get("cache"):  # TensorRT <= 10's calibrator
            opts.update(calib_algorithm=cal["method"], calib_cache=cal["cache"])
        elif cal.get("method") in ("minmax", "entropy", "percentile"):  # QDQ ranges (strongly typed)
            opts["calib_method"] = cal["method"]
    return opts


_FLAGS = {"min_batch": "--min-batch", "opt_batch": "--opt-batch", "max_batch": "--max-batch",
          "workspace_mb": "--workspace-mb", "dla_core": "--dla-core", "hardware_compatibility": "--hardware-compatibility",
          "calib_dataset": "--calib-dataset", "calib_images": "--calib-images", "calib_algorithm": "--calib-algorithm",
          "calib_cache": "--calib-cache"}


def rebuild_command(manifest: dict, engine) -> str:
    import shlex

    opts = rebuild_options(manifest)
    source = source_onnx_path(manifest, engine) or manifest.get("source_onnx") or "MODEL.onnx"
    parts = ["alexnet-export", "trt", str(source), "-o", str(engine),
             "--precision", opts["precision"]]
    for key, flag in _FLAGS.items():
        if key == "calib_dataset" and key in opts and opts[key] is None:
            parts += [flag, "DATA"]
        elif opts.get(key) is not None and not (key == "workspace_mb" and opts[key] == 1024):
            parts += [flag, str(opts[key])]
    if opts.get("version_compatible"):
        parts.append("--version-compatible")
    return " ".join(shlex.quote(p) if p != "alexnet-export" else p for p in parts)


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
