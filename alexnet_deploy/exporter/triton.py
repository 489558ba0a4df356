"""Write a Triton Inference Server model repository for an exported model (config.pbtxt + version folder),
so the same v2 clients keep working when users move from alexnet-serve to Triton or KServe."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from alexnet_deploy.errors import MetadataError, ModelLoadError, UserInputError
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
                 preferred: list[int], max_queue_delay_us: int, input_name: str, output_name: str, *,
                 cc_model_filenames: dict[str, str] | None = None, profiles: list[str] | None = None,
                 parameters: dict[str, str] | None = None) -> str:
    """The model's config.pbtxt (text format of Triton's ModelConfig, model_config.proto). A uint8-nhwc model
    (exporter/input_format.py: raw pixels in, preprocessing in the graph) declares exactly what alexnet-serve
    declares for it: one TYPE_UINT8 input of dims [H, W, 3] and no float input. ``cc_model_filenames``:
    compute capability ("8.6") -> plan file in the version folder; ``profiles``: the TensorRT optimization
    profile indices the instance group may use (listed only when the engine has several)."""
    dims = ", ".join(map(str, meta.input_dims))  # H, W, 3 for a uint8-nhwc model
    entries = [f'  {{ key: "{cc}" value: "{filename}" }}'
               for cc, filename in sorted((cc_model_filenames or {}).items(), key=lambda kv: _cc_key(kv[0]))]
    cc_lines = ["cc_model_filenames [", ",\n".join(entries), "]"] if entries else []
    profile_list = ", ".join(f'"{p}"' for p in profiles or [])
    params = {"alexnet_deploy.variant": meta.variant, **(parameters or {})}
    param_lines = []
    for key, value in params.items():
        param_lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{_pbtxt_str(value)}" }}', "}"]
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        *cc_lines,
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
        *([f"    profile: [ {profile_list} ]"] if profiles else []),
        "  }",
        "]",
        *param_lines,
    ]
    return "\n".join(lines) + "\n"


def _pbtxt_str(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


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


# ------------------------------------------------------------------------------------------- TensorRT plans
def plan_model_name(precision: str) -> str:
    """The Triton model name of a TensorRT engine of ``precision`` (alexnet-deploy's triton/ repository):
    ``alexnet-trt-<precision>`` beside the ONNX models' ``alexnet-<precision>``."""
    return f"alexnet-trt-{precision}"


def onnx_model_name(precision: str) -> str:
    """The Triton model name of an ONNX model of ``precision`` (what ``alexnet-serve --name auto`` answers to)."""
    return f"alexnet-{precision}"


_SM = re.compile(r"sm_?(\d+)(\d)")
_CC = re.compile(r"(\d+)\.(\d+)")


def _cc_key(cc: str) -> tuple[int, int]:
    m = _CC.fullmatch(cc)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def engine_compute_capability(manifest: dict) -> str | None:
    """The CUDA compute capability an engine was built for, as Triton spells it ("8.6": major.minor of
    cudaDeviceProp, the key of cc_model_filenames), from its manifest: ``target_compute_capability`` (TensorRT-RTX
    builds ahead of time for "sm86"; TensorRT records the build GPU's "8.6"), else the build GPU's. None when the
    manifest names neither (TensorRT-RTX "current" without a recorded GPU)."""
    target = manifest.get("target_compute_capability")
    if isinstance(target, str):
        if m := _SM.fullmatch(target.strip().lower()):
            return f"{int(m[1])}.{m[2]}"
        if _CC.fullmatch(target.strip()):
            return target.strip()
    cc = (manifest.get("gpu") or {}).get("compute_capability") if isinstance(manifest.get("gpu"), dict) else None
    return cc if isinstance(cc, str) and _CC.fullmatch(cc) else None


def plan_filename(cc: str) -> str:
    """The file of the engine for compute capability ``cc`` in a multi-architecture version folder."""
    major, minor = _cc_key(cc)
    return f"model_sm{major}{minor}.plan"


@dataclass(frozen=True)
class PlanEngine:
    """One .plan with what its manifest says that the Triton config needs."""

    path: Path
    manifest: dict
    meta: ModelMetadata
    compute_capability: str | None
    profiles: tuple[tuple[int, int, int], ...]  # (min, opt, max) batch per optimization profile, in index order

    @property
    def library(self) -> str:
        lib = self.manifest.get("library") or {}
        return f"{lib.get('name')} {lib.get('version')}"


def read_plan(path: str | Path) -> PlanEngine:
    """A .plan and its manifest (runtime/trt_library.read_manifest), checked for what the config reads: metadata,
    input/output names, profiles. A missing or broken manifest is one line (UserInputError)."""
    from alexnet_deploy.runtime.trt_library import manifest_path, read_manifest

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"engine not found: {path}")
    try:
        manifest = read_manifest(path)
        meta = ModelMetadata.from_props(manifest["metadata"], str(manifest_path(path)))
        io = (manifest["input"]["name"], manifest["output"]["name"])
        build = manifest["build"]
        raw = build.get("profiles") or [build["profile"]]  # the builder writes one; a list where it writes several
        profiles = tuple((int(pr["min"]), int(pr["opt"]), int(pr["max"])) for pr in raw)
    except ModelLoadError as exc:
        raise UserInputError(str(exc)) from None
    except MetadataError as exc:
        raise UserInputError(str(exc).splitlines()[0]) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserInputError(f"{manifest_path(path)} is not a complete engine manifest (missing or malformed "
                             f"{exc}); rebuild the engine with alexnet-export trt") from None
    if not all(isinstance(n, str) and n for n in io):
        raise UserInputError(f"{manifest_path(path)} names no input/output tensor; rebuild with alexnet-export trt")
    if any(not 1 <= lo <= opt <= hi for lo, opt, hi in profiles):
        raise UserInputError(f"{manifest_path(path)}: malformed optimization profile {list(profiles)}")
    from alexnet_deploy.fileio import sha256_file

    if manifest.get("engine_sha256") and sha256_file(path) != manifest["engine_sha256"]:
        raise UserInputError(f"{manifest_path(path).name} describes another engine than {path.name} (engine_sha256 "
                             "differs); rebuild it with alexnet-export trt")
    return PlanEngine(path, manifest, meta, engine_compute_capability(manifest), profiles)


def _profile_text(profiles) -> str:
    return ", ".join(f"{lo}..{hi} (opt {opt})" for lo, opt, hi in profiles)


def check_plan_group(engines: list[PlanEngine]) -> dict[str, str] | None:
    """Several engines of one model for different GPU architectures -> cc_model_filenames (compute capability ->
    file), or None for one engine (it stays model.plan). Refused in one line: engines of different ONNX sources
    (``source_onnx_sha256``), precisions, profiles or TensorRT versions, two for the same compute capability, one
    without a compute capability, and a hardware-compatible engine (it runs on every GPU from Ampere on)."""
    if len(engines) == 1:
        return None
    first = engines[0]
    seen: dict[str, Path] = {}
    for e in engines:
        m = e.manifest
        if m.get("source_onnx_sha256") != first.manifest.get("source_onnx_sha256") or not m.get("source_onnx_sha256"):
            raise UserInputError(f"{e.path.name} and {first.path.name} were built from different ONNX models "
                                 "(source_onnx_sha256 in their manifests); one Triton model takes engines of one model")
        if m.get("precision") != first.manifest.get("precision"):
            raise UserInputError(f"{e.path.name} is {m.get('precision')}, {first.path.name} is "
                                 f"{first.manifest.get('precision')}: give each precision its own --name")
        if e.profiles != first.profiles:
            raise UserInputError(f"{e.path.name} has batch profile {_profile_text(e.profiles)}, {first.path.name} "
                                 f"{_profile_text(first.profiles)}: one config describes both; build them alike")
        if e.library != first.library:
            raise UserInputError(f"{e.path.name} was built with {e.library}, {first.path.name} with {first.library}: "
                                 "one tritonserver loads engines of its one TensorRT version")
        if (m.get("build") or {}).get("hardware_compatibility", "none") not in ("none", None):
            raise UserInputError(f"{e.path.name} is hardware-compatible (runs on every GPU from Ampere on); "
                                 "export it alone, without per-architecture engines")
        cc = e.compute_capability
        if cc is None:
            raise UserInputError(f"{e.path.name}: its manifest names no compute capability, so it cannot be "
                                 "matched to a GPU; export it alone")
        if cc in seen:
            raise UserInputError(f"{seen[cc].name} and {e.path.name} are both for compute capability {cc}; give "
                                 "one engine per GPU architecture")
        seen[cc] = e.path
    return {e.compute_capability: plan_filename(e.compute_capability) for e in engines}


def _refuse_stray_models(version_dir: Path, writing: set[str]) -> None:
    """Model files from another export in the version folder that Triton would pick up instead of (or beside)
    ours: a model.plan is the TensorRT backend's fallback for a GPU not in cc_model_filenames."""
    if not version_dir.is_dir():
        return
    stray = sorted(p.name for p in version_dir.iterdir()
                   if p.name not in writing and (p.suffix == ".plan" or p.name == "model.onnx"))
    if stray:
        raise UserInputError(f"{version_dir} already holds {', '.join(stray)} from another export, which Triton "
                             "would load instead of or beside this one; remove it or choose another --name")


def tensorrt_rtx_note(models: list[str], library: str) -> str:
    """The note for TensorRT-RTX engines put into a Triton repository, given once per repository however many of its
    models hold one: ``models`` names them (engine files or Triton model names), ``library`` is "tensorrt_rtx 1.7.1"."""
    return (f"note: {', '.join(models)} {'was' if len(models) == 1 else 'were'} built with {library}; Triton's "
            "TensorRT backend loads engines of its own TensorRT (libnvinfer) version: build with that tensorrt for "
            "serving")


def export_triton(model: str | Path | list, repo: str | Path, *, name: str = "alexnet", max_batch: int | None = None,
                  instances: int = 1, kind: str | None = None, preferred: list[int] | None = None,
                  max_queue_delay_us: int = 2000, version: int = 1, echo=None, note_tensorrt_rtx: bool = True) -> Path:
    """One Triton model ``repo/name``: config.pbtxt, labels.txt and ``version/`` holding the model.

    ``model``: one .onnx, one .plan, or several .plan engines of one ONNX model for different GPU architectures
    (compute capabilities from their manifests). Those go into ONE version folder as model_sm86.plan, ... with
    Triton's ``cc_model_filenames`` map: Triton's own mechanism for "the plan for this GPU" (the backend looks the
    GPU's major.minor up in the map). One version per architecture would not do it: the default version policy
    serves only the latest version, so every GPU would get the newest folder's engine.

    ``max_batch`` None: 32 for ONNX, the engines' profile max for a plan (never above it). ``kind`` None: GPU for
    a TensorRT plan, else what this host has (``host_kind``). ``echo``: where notes go (an engine built with
    TensorRT-RTX, which Triton's TensorRT backend does not load). ``note_tensorrt_rtx`` False: leave that note to
    a caller that exports several models into one repository and gives it once (``tensorrt_rtx_note``)."""
    models = [Path(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    repo = Path(repo)
    check_model_name(name)
    if not models:
        raise UserInputError("give a model: an .onnx model or .plan engine(s)")
    for m in models:
        if not m.is_file():
            raise UserInputError(f"model not found: {m}")
    if (max_batch is not None and max_batch < 1) or instances < 1 or version < 1:
        raise UserInputError("--max-batch, --instances and the version must be at least 1")
    if kind not in (None, "cpu", "gpu"):
        raise UserInputError("--kind must be cpu or gpu")
    suffixes = {m.suffix.lower() for m in models}
    if not suffixes <= {".onnx", ".plan", ".engine"}:
        bad = next(m for m in models if m.suffix.lower() not in (".onnx", ".plan", ".engine"))
        raise UserInputError(f"{bad.name}: Triton export takes an .onnx model or a .plan engine")
    if ".onnx" in suffixes and len(models) > 1:
        raise UserInputError("one Triton model is one .onnx model, or .plan engines of one model for different GPU "
                             f"architectures; got {', '.join(m.name for m in models)}")
    cc_files = profiles = None
    params: dict[str, str] = {}
    if ".onnx" in suffixes:
        from alexnet_deploy.runtime.metadata import read_onnx_metadata

        onnx_model = models[0]
        try:
            meta = read_onnx_metadata(onnx_model)
        except MetadataError:
            raise UserInputError(f"{onnx_model.name} has no alexnet-deploy metadata (class names, input size), which "
                                 "the Triton config needs; export it with alexnet-export onnx") from None
        platform = "onnxruntime_onnx"
        files = {"model.onnx": onnx_model}
        _check_contract(onnx_model, meta)  # the config below describes one input and one [N, C] output
        in_name, out_name = meta.input_name, meta.output_name
        data_files = external_data_files(onnx_model)
        if meta.batch is not None:
            raise UserInputError(f"{onnx_model.name} has a static batch of {meta.batch}; Triton's dynamic batching "
                                 "needs a dynamic-batch export (alexnet-export onnx without --batch)")
        max_batch = 32 if max_batch is None else max_batch
    else:
        engines = [read_plan(m) for m in models]
        cc_files = check_plan_group(engines)
        first = engines[0]
        meta = first.meta
        platform = "tensorrt_plan"
        in_name, out_name = first.manifest["input"]["name"], first.manifest["output"]["name"]
        lo, hi = min(p[0] for p in first.profiles), max(p[2] for p in first.profiles)
        if lo > 1:
            raise UserInputError(f"{first.path.name}'s profile starts at batch {lo}, but Triton's dynamic batcher "
                                 "sends batches from 1; rebuild with --min-batch 1")
        if max_batch is None:
            max_batch = hi
        elif max_batch > hi:
            raise UserInputError(f"--max-batch {max_batch} exceeds the engine's profile (max {hi})")
        covered = 0  # every batch 1..max_batch must lie in some profile (Triton picks one per batch shape)
        for p_lo, _, p_hi in sorted(first.profiles):
            if p_lo > covered + 1:
                break
            covered = max(covered, p_hi)
        if covered < max_batch:
            raise UserInputError(f"the engine's profiles ({_profile_text(first.profiles)}) leave batches "
                                 f"{covered + 1}..{max_batch} uncovered; lower --max-batch or rebuild")
        if len(first.profiles) > 1:  # Triton uses profile 0 only unless the instance group lists them
            profiles = [str(i) for i in range(len(first.profiles))]
        files = ({cc_files[e.compute_capability]: e.path for e in engines} if cc_files
                 else {"model.plan": first.path})
        data_files = []
        params = {"alexnet_deploy.precision": str(first.manifest.get("precision") or meta.precision),
                  "alexnet_deploy.trt_library": first.library}
        if (first.manifest.get("library") or {}).get("name") == "tensorrt_rtx" and echo is not None \
                and note_tensorrt_rtx:
            echo(tensorrt_rtx_note([first.path.name], first.library))
        if kind == "cpu":
            raise UserInputError("a TensorRT plan runs on a GPU only; leave out --kind or give --kind gpu")
        kind = "gpu"
    preferred = sorted(set(preferred or []))
    if any(p < 1 or p > max_batch for p in preferred):
        raise UserInputError(f"preferred batch sizes must lie in 1..{max_batch}")
    kind = kind or host_kind()
    root = repo / name
    vdir = root / str(version)
    _refuse_stray_models(vdir, set(files))
    vdir.mkdir(parents=True, exist_ok=True)
    for rel in data_files:  # external weights first: the model file never sits there without them
        dst = vdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(models[0].parent / rel, tmp)
    for filename, src in files.items():
        with atomic_path(vdir / filename) as tmp:
            shutil.copyfile(src, tmp)
    atomic_write_bytes(root / "labels.txt", ("\n".join(meta.class_names) + "\n").encode())
    atomic_write_bytes(root / "config.pbtxt", config_pbtxt(name, meta, platform, max_batch, instances, kind,
                                                           preferred, max_queue_delay_us, in_name, out_name,
                                                           cc_model_filenames=cc_files, profiles=profiles,
                                                           parameters=params).encode())
    return root
