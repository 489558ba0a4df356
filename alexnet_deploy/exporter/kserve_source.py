"""What ``alexnet-export kserve`` was given (exporter/kserve.py builds the manifests from it): a deployment folder, a
Triton repository, an artifact folder or a model file, read into a :class:`KServeSource` (the Triton models and
whether they need a GPU, the artifact alexnet-serve runs, whether TensorRT engines are present)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.errors import UserInputError


@dataclass(frozen=True)
class TritonModel:
    """One model of a Triton repository, as its config.pbtxt describes it."""

    name: str
    platform: str
    gpu: bool  # tensorrt_plan, or an instance group of KIND_GPU
    trt_library: str | None = None  # alexnet_deploy.trt_library parameter of a plan ("tensorrt_rtx 1.2")


@dataclass(frozen=True)
class ServeModel:
    """What alexnet-serve runs: ``rel`` (a folder, relative to the uploaded tree) and ``file`` (what the command
    names inside it: "" for an artifact folder, whose manifest.json names the model)."""

    rel: str
    file: str
    name: str  # the model name it announces
    engine: str  # alexnet-serve --engine for the CPU image
    plan: bool  # a TensorRT engine: needs an image with TensorRT, a GPU
    bytes: int


@dataclass(frozen=True)
class KServeSource:
    kind: str  # "deploy" | "repository" | "artifact" | "model"
    path: Path
    repository: Path | None = None
    repository_rel: str | None = None  # the repository inside the uploaded tree ("triton/model_repository", "")
    triton_models: tuple[TritonModel, ...] = ()
    repository_bytes: int = 0
    serve: ServeModel | None = None
    has_engines: bool = False  # TensorRT engines in the input (a .plan, trt-* artifacts, tensorrt_plan models)
    serve_problem: str | None = None  # why alexnet-serve's manifests cannot be written (asked for in one line)


# ------------------------------------------------------------------------------------------- reading the input
def _artifact_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and str(data.get("schema", "")).startswith("alexnet-deploy.artifact")
    return data if ok else None


def is_triton_repository(folder: Path) -> bool:
    return folder.is_dir() and any((d / "config.pbtxt").is_file() for d in folder.iterdir() if d.is_dir())


def _pbtxt_field(text: str, key: str) -> str | None:
    m = re.search(rf'^\s*{key}\s*:\s*"([^"]*)"', text, re.M)
    return m[1] if m else None


def read_triton_models(repo: Path) -> tuple[TritonModel, ...]:
    """Every model folder with a config.pbtxt. GPU: a ``tensorrt_plan`` (platform or backend "tensorrt") or an
    instance group of KIND_GPU (alexnet-export triton --kind gpu)."""
    models = []
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()):
        try:
            text = (d / "config.pbtxt").read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"cannot read {d / 'config.pbtxt'}: {getattr(exc, 'strerror', None) or exc}") from None
        platform = _pbtxt_field(text, "platform") or _pbtxt_field(text, "backend") or "?"
        plan = platform in ("tensorrt_plan", "tensorrt")
        m = re.search(r'key:\s*"alexnet_deploy\.trt_library"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
        models.append(TritonModel(_pbtxt_field(text, "name") or d.name, platform,
                                  plan or bool(re.search(r"\bKIND_GPU\b", text)), m[1] if m else None))
    return tuple(models)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _onnx_name(model: Path) -> str:
    from alexnet_deploy.errors import MetadataError
    from alexnet_deploy.exporter.triton import onnx_model_name
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    try:
        return onnx_model_name(read_onnx_metadata(model).precision)
    except MetadataError:
        raise UserInputError(f"{model.name} has no alexnet-deploy metadata (its precision names the model); "
                             "export it with alexnet-export onnx, or give --name") from None


def _model_file(path: Path, rel: str, name: str | None) -> ServeModel:
    """A .onnx model or .plan engine; ``name`` None: the name alexnet-deploy's Triton repository gives it."""
    from alexnet_deploy.runtime.engines import ENGINE_SUFFIXES, ONNX_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return ServeModel(rel, path.name, name or _onnx_name(path), "ort", False, path.stat().st_size)
    if suffix in ENGINE_SUFFIXES:
        from alexnet_deploy.exporter.triton import plan_model_name, read_plan

        engine = read_plan(path)  # the manifest beside it (one line when missing or broken)
        precision = str(engine.manifest.get("precision") or engine.meta.precision)
        return ServeModel(rel, path.name, name or plan_model_name(precision), "trt", True, path.stat().st_size)
    raise UserInputError(f"{path.name}: give an .onnx model, a .plan engine, a deployment folder or a Triton "
                         "repository")


def _artifact(folder: Path, rel: str, manifest: dict, name: str | None) -> ServeModel:
    model = manifest.get("model")
    if not isinstance(model, str) or not model or Path(model).is_absolute() or ".." in Path(model).parts \
            or not (folder / model).is_file():
        raise UserInputError(f"{folder / 'manifest.json'} names no model file inside the folder")
    m = _model_file(folder / model, rel, name)
    return ServeModel(rel, "", m.name, m.engine, m.plan, m.bytes)  # alexnet-serve DIR reads manifest.json


def _pick(kind: str, available: list[str], preferred: str, given: str | None, where: Path) -> str:
    if given is not None:
        if given not in available:
            raise UserInputError(f"--artifact {given!r}: {where} has no such {kind}; choose from "
                                 f"{', '.join(available) or '(none)'}")
        return given
    if preferred in available:
        return preferred
    if len(available) == 1:
        return available[0]
    raise UserInputError(f"{where} holds {len(available)} {kind}s for alexnet-serve ({', '.join(available)}); "
                         "choose one with --artifact")


def inspect_source(path: str | Path, *, artifact: str | None = None, name: str | None = None) -> KServeSource:
    """What ``path`` is and what each manifest runs from it. Refused in one line: a missing path, a folder that is
    neither a deployment folder, an artifact folder nor a Triton repository."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"not found: {path}")
    if path.is_file():
        if artifact is not None:
            raise UserInputError("--artifact chooses inside a deployment folder or a Triton repository, not a model file")
        serve = _model_file(path, "", name)
        return KServeSource("model", path, serve=serve, has_engines=serve.plan)
    manifest = _artifact_manifest(path)
    if manifest is not None and manifest.get("kind") == "triton":  # alexnet-deploy's triton/ artifact folder
        path = path / str(manifest.get("model") or "model_repository")
        manifest = None
        if not is_triton_repository(path):
            raise UserInputError(f"{path} (named by {path.parent / 'manifest.json'}) is not a Triton repository")
    if manifest is not None:  # one artifact folder (onnx-fp32/, trt-fp16/): alexnet-serve only
        if artifact is not None:
            raise UserInputError(f"{path} is one artifact folder; --artifact chooses inside a deployment folder")
        serve = _artifact(path, "", manifest, name)
        return KServeSource("artifact", path, serve=serve, has_engines=serve.plan)
    arts = {d.name: m for d in sorted(path.iterdir()) if d.is_dir() and (m := _artifact_manifest(d)) is not None}
    if arts:  # a deployment folder of alexnet-deploy
        repo = path / "triton" / "model_repository"
        has_repo = is_triton_repository(repo)
        models = read_triton_models(repo) if has_repo else ()
        runnable = [a for a, m in arts.items() if m.get("kind") != "triton"]
        pick = _pick("artifact", runnable, "onnx-fp32", artifact, path)
        serve = _artifact(path / pick, pick, arts[pick], name)
        engines = any(m.get("kind") == "trt" or a.startswith("trt-") for a, m in arts.items()) \
            or any(t.gpu for t in models)
        return KServeSource("deploy", path, repo if has_repo else None, "triton/model_repository" if has_repo else None,
                            models, _tree_bytes(repo) if has_repo else 0, serve, engines)
    if is_triton_repository(path):
        models = read_triton_models(path)
        onnx = [t.name for t in models if t.platform == "onnxruntime_onnx"]
        serve, problem = None, None
        if artifact is not None or onnx:
            pick = _pick("ONNX model", onnx, "alexnet-fp32", artifact, path)
            vdir = _latest_version(path / pick)
            if vdir is None or not (vdir / "model.onnx").is_file():
                raise UserInputError(f"{path / pick} has no version folder with model.onnx")
            serve = _model_file(vdir / "model.onnx", vdir.relative_to(path).as_posix(), name or pick)
        else:
            problem = (f"{path} holds no ONNX model for alexnet-serve (only {', '.join(t.name for t in models)}); "
                       "give --only triton")
        return KServeSource("repository", path, path, "", models, _tree_bytes(path), serve,
                            any(t.gpu for t in models), problem)
    raise UserInputError(f"{path} is neither a deployment folder of alexnet-deploy, an artifact folder "
                         "(manifest.json) nor a Triton repository (model folders with config.pbtxt)")


def _latest_version(model_dir: Path) -> Path | None:
    versions = [d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, key=lambda d: int(d.name)) if versions else None
