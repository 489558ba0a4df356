"""The steps of `alexnet-deploy`, each a thin call of a stage's public API: what it reads (for its cache key),
what it writes into its staging folder, and the command that reproduces it alone."""
from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from alexnet_deploy.deploy.plan import GOLDEN, REFERENCE, DeployOptions, Step, engines_for, onnx_artifact
from alexnet_deploy.errors import InferenceError, MissingDependencyError, ModelLoadError

ARTIFACT_SCHEMA = "alexnet-deploy.artifact/1"
MODEL_FILES = {"onnx": "model.onnx", "trt": "model.plan"}
# Q/DQ placements (calibration/placement.py): onnx-int8 is for ONNX Runtime (fast INT8 CPU kernels, logits
# float); trt-int8 is built from its own QDQ ONNX with TensorRT's placement, kept beside the engine
ORT_PLACEMENT, TRT_PLACEMENT = "ort", "tensorrt"
TRT_INT8_ONNX = "model.int8.onnx"
# every reproduce command is relative to the deployment folder (provenance.json says "command_cwd": "..")
COMMANDS_RUN_FROM = "the deployment folder (cd DIR first): paths are relative to it"


class Skipped(Exception):
    """The step does not apply on this machine (no TensorRT library, no GPU); the message says why."""


@dataclass
class Context:
    opts: DeployOptions
    weights_sha256: str
    dataset_id: dict
    engines: tuple[str, ...]
    echo: Callable[[str], None] = print
    _loaded: object = None
    versions: dict = field(default_factory=dict)
    run_info: dict = field(default_factory=dict)  # load average at the start, ... (the report's header)

    @property
    def out(self) -> Path:
        return self.opts.out

    @property
    def loaded(self):
        if self._loaded is None:
            from alexnet_deploy.models.weights import load_model

            self._loaded = load_model(self.opts.variant, str(self.opts.weights))
        return self._loaded


def model_path(out: Path, artifact: str, weights: Path) -> Path:
    if artifact == REFERENCE:
        return weights
    if artifact == GOLDEN:
        return out / artifact / "manifest.json"
    if artifact == "triton":
        return out / artifact / "model_repository"
    return out / artifact / MODEL_FILES[artifact.split("-", 1)[0]]


def _q(p) -> str:
    return shlex.quote(str(p))


def _versions(*modules: str) -> dict:
    out = {}
    for m in modules:
        try:
            out[m] = __import__(m).__version__
        except Exception:  # noqa: BLE001 - absent: not part of the key
            out[m] = None
    return out


# ------------------------------------------------------------------------------------------- key parts
def key_parts(ctx: Context, step: Step, input_sha: dict[str, str]) -> dict:
    """What decides a step's output besides its name: input sha256s (``input_sha``: artifact -> model sha256),
    options and library versions. Only the options a step uses are in its key."""
    o = ctx.opts
    from alexnet_deploy import __version__

    ins = {a: input_sha[a] for a in step.needs}
    base = {"inputs": ins, "alexnet_deploy": __version__}
    if step.kind == "export":
        return {**base, "weights": str(o.weights), "weights_sha256": ctx.weights_sha256, "variant": o.variant,
                "precision": step.precision, "versions": _versions("torch", "onnx", "onnxsim", "onnxruntime")}
    if step.kind == "calibrate":
        return {**base, "dataset": ctx.dataset_id, "images": o.calib_images, "method": o.calib_method,
                "placement": ORT_PLACEMENT, "sensitivity": o.sensitivity, "max_drop": o.max_drop, "eval_images": o.parity_images,
                "versions": _versions("onnxruntime", "onnx")}
    if step.kind == "trt":
        from alexnet_deploy.runtime.trt_library import load_library

        try:
            lib = load_library(o.trt_library)
        except MissingDependencyError as exc:
            raise Skipped(str(exc)) from None
        calib = {} if step.precision != "int8" else {
            "calibration": {"dataset": ctx.dataset_id, "images": o.calib_images, "method": o.calib_method,
                            "sensitivity": o.sensitivity, "max_drop": o.max_drop, "eval_images": o.parity_images,
                            "placement": TRT_PLACEMENT, "versions": _versions("onnxruntime", "onnx")}}
        return {**base, "library": [lib.name, lib.version], "max_batch": o.max_batch,
                "workspace_mb": o.workspace_mb, "compute_capability": o.compute_capability, **calib}
    if step.kind == "triton":
        return {**base, "max_batch": o.max_batch, "kind": triton_kind(o), "preferred": _preferred(o)}
    if step.kind == "golden":
        from alexnet_deploy.parity.golden_write import gates_for
        from alexnet_deploy.parity.golden import FLOAT_INPUTS_MAX_BYTES, GOLDEN_SCHEMA

        # the gates themselves (project defaults + --tol) are in the key: changed defaults rewrite gates.json
        return {**base, "schema": GOLDEN_SCHEMA, "weights_sha256": ctx.weights_sha256, "variant": o.variant,
                "dataset": ctx.dataset_id, "images": o.golden_images, "input_format": _export_input_format(),
                "float_inputs_max_bytes": FLOAT_INPUTS_MAX_BYTES, "gates": gates_for(o.tolerances),
                "versions": _versions("torch", "numpy", "PIL")}
    model_sha = ctx.weights_sha256 if step.artifact == REFERENCE else input_sha[step.artifact]
    if step.kind == "parity":
        return {**base, "model_sha256": model_sha, "weights_sha256": ctx.weights_sha256, "engine": step.engine,
                "dataset": ctx.dataset_id, "images": o.parity_images, "random_samples": o.random_samples,
                "tolerances": o.tolerances,
                "versions": _versions("onnxruntime", "torch", "tensorrt", "tensorrt_rtx")}
    if step.kind == "bench":
        from alexnet_deploy.runtime.machine import machine_info

        machine = {k: v for k, v in machine_info(None).items() if k not in ("threads", "load_average")}
        return {**base, "model_sha256": model_sha, "engines": engines_for(step.artifact, ctx.engines),
                "batch_sizes": list(o.batch_sizes), "duration_s": o.bench_duration_s,
                "iterations": o.bench_iterations, "warmup_ms": o.bench_warmup_ms, "roofline": o.roofline,
                "machine": machine}
    raise ValueError(step.kind)


def triton_kind(o: DeployOptions) -> str:
    if o.triton_kind:
        return o.triton_kind
    try:
        from alexnet_deploy.exporter.triton import host_kind
    except ImportError:
        return "gpu"
    return host_kind()


def _preferred(o: DeployOptions) -> list[int]:
    return sorted({b for b in o.batch_sizes if 1 < b <= o.max_batch})


# ------------------------------------------------------------------------------------------- commands
def rel(path, out: Path) -> str:
    """``path`` relative to the deployment folder ``out`` (commands run from there, so a copied folder still
    documents itself); absolute only where no relative path exists (another drive)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(out).resolve())
    except ValueError:
        return str(Path(path).resolve())


def _dataset_arg(dataset: str, out: Path) -> str:
    return rel(dataset, out) if dataset and dataset != "digits" and Path(dataset).exists() else dataset


def command(ctx: Context, step: Step) -> str:
    """The exact command line that makes this step's output alone, run from the deployment folder (paths
    relative to it: ``cd DIR`` first; :data:`COMMANDS_RUN_FROM`)."""
    o = ctx.opts
    out = o.out.resolve()
    w = rel(o.weights, out)
    variant = ["--variant", o.variant] if o.variant else []
    if step.kind == "export":
        return " ".join(["alexnet-export onnx", "--weights", _q(w), *variant, "-o",
                         _q(f"{step.artifact}/model.onnx"), *(["--fp16"] if step.precision == "fp16" else [])])
    if step.kind == "calibrate":
        return _calibrate_command(o, f"{step.artifact}/model.onnx", ["--placement", ORT_PLACEMENT])
    if step.kind == "trt":
        src = f"{step.needs[0]}/model.onnx"
        calib = ""
        if step.precision == "int8":  # TensorRT's placement, calibrated into the engine's folder
            src = f"{step.artifact}/{TRT_INT8_ONNX}"
            calib = _calibrate_command(o, src, ["--placement", TRT_PLACEMENT]) + " && "
        extra = ["--library", o.trt_library] if o.trt_library != "auto" else []
        if o.compute_capability:
            extra += ["--compute-capability", o.compute_capability]
        if o.workspace_mb != 1024:
            extra += ["--workspace-mb", str(o.workspace_mb)]
        return calib + " ".join(["alexnet-export trt", _q(src), "-o",
                                 _q(f"{step.artifact}/model.plan"), "--precision", step.precision or "fp32",
                                 "--max-batch", str(o.max_batch), *extra])
    if step.kind == "triton":
        pref = ",".join(map(str, _preferred(o)))
        return " && ".join(
            " ".join(["alexnet-export triton", _q(f"{a}/model.onnx"), "--repo", _q("triton/model_repository"),
                      "--name", f"alexnet-{a.split('-', 1)[1]}", "--max-batch", str(o.max_batch), "--kind", triton_kind(o),
                      *(["--preferred-batch", pref] if pref else [])])
            for a in step.needs)
    if step.kind == "golden":  # written by alexnet-deploy itself: the command that makes this folder
        return deploy_command(o)
    model = rel(model_path(o.out, step.artifact, o.weights), out)
    if step.kind == "parity":
        tol = [f"--tol {k}={v}" for k, v in o.tolerances.items()]
        return " ".join(["alexnet-parity", _q(model), "--engine", step.engine or "ort", "--reference", _q(w),
                         "--dataset", _q(_dataset_arg(o.dataset, out)), "--num-images", str(o.parity_images),
                         "--random-samples", str(o.random_samples), *tol])
    engines = ",".join(engines_for(step.artifact, ctx.engines))
    timing = (["--iterations", str(o.bench_iterations)] if o.bench_iterations
              else ["--duration-s", str(o.bench_duration_s)])
    return " ".join(["alexnet-bench", _q(model), "--engine", engines, "--batch-sizes",
                     ",".join(map(str, o.batch_sizes)), "--warmup-ms", f"{o.bench_warmup_ms:g}", *timing,
                     *([] if o.roofline else ["--no-roofline"])])


def deploy_command(o: DeployOptions, **changes) -> str:
    """The alexnet-deploy command line of these options (what writes the golden set), run from the deployment
    folder; ``changes`` override options (the report's suggested next step: ``max_drop=0.5``)."""
    import dataclasses

    o = dataclasses.replace(o, **changes) if changes else o
    out = o.out.resolve()
    d = DeployOptions(weights=o.weights, out=o.out, dataset=o.dataset)
    args = ["alexnet-deploy", "--weights", _q(rel(o.weights, out)), "--dataset", _q(_dataset_arg(o.dataset, out)),
            "--out", "."]
    if o.variant:
        args += ["--variant", o.variant]
    for flag, value, default in (("--precisions", ",".join(o.precisions), ",".join(d.precisions)),
                                 ("--targets", ",".join(o.targets), ",".join(d.targets)),
                                 ("--engines", ",".join(o.engines) if o.engines else "auto", "auto"),
                                 ("--batch-sizes", ",".join(map(str, o.batch_sizes)), ",".join(map(str, d.batch_sizes))),
                                 ("--parity-images", str(o.parity_images), str(d.parity_images)),
                                 ("--golden-images", str(o.golden_images), str(d.golden_images)),
                                 ("--calib-images", str(o.calib_images), str(d.calib_images)),
                                 ("--calib-method", o.calib_method, d.calib_method),
                                 ("--max-drop", "" if o.max_drop is None else f"{o.max_drop:g}", "")):
        if value != default:
            args += [flag, _q(value)]
    if not o.sensitivity:
        args.append("--no-sensitivity")
    args += [f"--tol {k}={v}" for k, v in o.tolerances.items()]
    return " ".join(args)


def _export_input_format() -> str:
    """The input format of the models alexnet-deploy exports (the golden set stores inputs for it)."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions

    return ExportOptions().input_format


def _calibrate_command(o: DeployOptions, output: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    extra = [*extra, *(["--sensitivity"] if o.sensitivity else []),
             *(["--max-drop", str(o.max_drop)] if o.max_drop is not None else [])]
    return " ".join(["alexnet-calibrate", _q(f"{onnx_artifact('fp32')}/model.onnx"), "-o",
                     _q(output), "--dataset", _q(_dataset_arg(o.dataset, o.out)), "--num-images", str(o.calib_images),
                     "--eval-images", str(o.parity_images), "--method", o.calib_method, *extra])


# ------------------------------------------------------------------------------------------- artifacts
def run_export(ctx: Context, step: Step, stage: Path) -> dict:
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx

    # the parity step below gates every artifact on the user's dataset; the exporter's own check would repeat it
    res = export_onnx(ctx.loaded, stage / "model.onnx", ExportOptions(fp16=step.precision == "fp16", check=False))
    _sidecars(stage, "onnx", "model.onnx", res.metadata)
    return {"folded_batchnorms": list(getattr(res, "folded_batchnorms", []) or []),
            "simplified": bool(getattr(res, "simplified", False))}


def run_calibrate(ctx: Context, step: Step, stage: Path) -> dict:
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    o = ctx.opts
    src = o.out / step.needs[0] / "model.onnx"
    res = calibrate(src, stage / "model.onnx", dataset=o.dataset, num_images=o.calib_images,
                    eval_images=o.parity_images, method=o.calib_method, sensitivity=o.sensitivity,
                    max_drop=o.max_drop, placement=ORT_PLACEMENT, echo=_indent(ctx.echo))
    _sidecars(stage, "onnx", "model.onnx", read_onnx_metadata(stage / "model.onnx"))
    chosen = res.chosen.row() if hasattr(res.chosen, "row") else {}
    return _jsonable({"chosen": chosen, "tried": [e.row() for e in getattr(res, "tried", []) if hasattr(e, "row")],
                      "sensitivity": list(getattr(res, "sensitivity", []) or []),
                      "provenance": dict(getattr(res, "provenance", {}) or {})})


def run_trt(ctx: Context, step: Step, stage: Path) -> dict:
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
    from alexnet_deploy.runtime.metadata import ModelMetadata

    o = ctx.opts
    src = o.out / step.needs[0] / "model.onnx"
    if step.precision == "int8":  # a QDQ ONNX with TensorRT's Q/DQ placement (onnx-int8 has ONNX Runtime's)
        from alexnet_deploy.calibration.run import calibrate

        calibrate(src, stage / TRT_INT8_ONNX, dataset=o.dataset, num_images=o.calib_images,
                  eval_images=o.parity_images, method=o.calib_method, sensitivity=o.sensitivity,
                  max_drop=o.max_drop, placement=TRT_PLACEMENT, echo=_indent(ctx.echo))
        src = stage / TRT_INT8_ONNX
    opts = TrtBuildOptions(precision=step.precision or "fp32", library=o.trt_library, max_batch=o.max_batch,
                           workspace_mb=o.workspace_mb, compute_capability=o.compute_capability)
    try:
        res = build_engine(src, stage / "model.plan", opts, echo=_indent(ctx.echo))
    except MissingDependencyError as exc:
        raise Skipped(str(exc)) from None
    manifest = res.manifest
    meta = ModelMetadata.from_props(manifest["metadata"], "engine manifest")
    _sidecars(stage, "trt", "model.plan", meta, {"engine_manifest": "model.plan.manifest.json",
                                                "library": manifest.get("library"),
                                                "precision_path": manifest.get("precision_path"),
                                                "target_compute_capability": manifest.get("target_compute_capability"),
                                                "profile": manifest.get("build", {}).get("profile")})
    return {"library": manifest.get("library"), "precision_path": manifest.get("precision_path"),
            "build_seconds": round(float(res.seconds), 3)}


def run_triton(ctx: Context, step: Step, stage: Path) -> dict:
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.exporter.triton import export_triton

    o = ctx.opts
    names = []
    for a in step.needs:
        name = f"alexnet-{a.split('-', 1)[1]}"
        export_triton(o.out / a / "model.onnx", stage / "model_repository", name=name, max_batch=o.max_batch,
                      kind=triton_kind(o), preferred=_preferred(o))
        names.append(name)
    meta = read_onnx_metadata(o.out / step.needs[0] / "model.onnx")
    _sidecars(stage, "triton", "model_repository", meta, {"models": names,
                                                         "serve": "tritonserver --model-repository model_repository"})
    return {"models": names}


def run_golden(ctx: Context, step: Step, stage: Path) -> dict:
    from alexnet_deploy.deploy.golden import write_golden

    o = ctx.opts
    return write_golden(ctx.loaded, o.dataset, o.golden_images, stage, tolerances=o.tolerances,
                        dataset_id=ctx.dataset_id, input_format=_export_input_format(), echo=_indent(ctx.echo))


RUNNERS = {"export": run_export, "calibrate": run_calibrate, "trt": run_trt, "triton": run_triton,
           "golden": run_golden}


def _sidecars(stage: Path, kind: str, model: str, meta, extra: dict | None = None) -> None:
    """manifest.json (what the artifact is) and labels.txt beside the model; provenance.json comes last."""
    from alexnet_deploy.fileio import atomic_write_bytes, atomic_write_json

    c, h, w = meta.input_shape
    atomic_write_json(stage / "manifest.json", _jsonable({
        "schema": ARTIFACT_SCHEMA, "kind": kind, "model": model, "precision": meta.precision,
        "variant": meta.variant, "num_classes": meta.num_classes,
        "input": {"name": meta.input_name, "shape": [meta.batch or -1, c, h, w], "dtype": meta.io_dtype},
        "output": {"name": meta.output_name, "kind": meta.output_kind},
        "preprocessing": meta.preprocessing.to_dict(), "labels": "labels.txt", **(extra or {})}))
    atomic_write_bytes(stage / "labels.txt", ("\n".join(meta.class_names) + "\n").encode())


# ------------------------------------------------------------------------------------------- checks
def run_parity(ctx: Context, step: Step) -> dict:
    """-> {"status": "pass"|"fail", "report": ...}; raises Skipped when the engine cannot run here."""
    from alexnet_deploy.parity.api import check_parity

    o = ctx.opts
    model = model_path(o.out, step.artifact, o.weights)
    try:
        report = check_parity(str(model), engine=step.engine, reference=str(o.weights), dataset=o.dataset,
                              num_images=o.parity_images, random_samples=o.random_samples, **o.tolerances)
    except (MissingDependencyError, InferenceError) as exc:
        raise Skipped(str(exc)) from None
    except ModelLoadError as exc:
        if step.engine == "trt":  # an engine this machine's library/GPU cannot load
            raise Skipped(str(exc)) from None
        raise
    return {"status": "pass" if report.passed else "fail", "report": _jsonable(report.to_dict()),
            "table": report.table()}


def run_bench_step(ctx: Context, step: Step) -> dict:
    from alexnet_deploy.benchmarks.harness import BenchConfig
    from alexnet_deploy.benchmarks.run import run_bench

    o = ctx.opts
    model = model_path(o.out, step.artifact, o.weights)
    cfg = BenchConfig(tuple(o.batch_sizes), o.bench_warmup_ms,
                      None if o.bench_iterations else o.bench_duration_s, o.bench_iterations)
    try:
        # the CPU roofline applies to ONNX graphs (alexnet-bench costs them); the report fills the PyTorch row in
        result = run_bench([str(model)], list(engines_for(step.artifact, ctx.engines)), cfg,
                           roofline=o.roofline and step.artifact.startswith("onnx-"), echo=_indent(ctx.echo))
    except (MissingDependencyError, InferenceError, ModelLoadError) as exc:
        raise Skipped(str(exc)) from None
    rows = result.to_dict()["rows"]
    if rows and all(r.get("skipped") for r in rows):  # nothing could run here (no GPU, no provider): not cached
        raise Skipped(rows[0]["skipped"])
    return {"status": "measured", "result": _jsonable(result.to_dict())}


def _indent(echo):
    return lambda msg="": echo("    " + str(msg).replace("\n", "\n    "))


def _jsonable(obj):
    """Round-trip through JSON (numpy scalars -> numbers, NaN/Inf -> None) so what is cached equals what is read."""
    import math

    def clean(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    def default(o):
        return o.item() if hasattr(o, "item") else str(o)

    return clean(json.loads(json.dumps(obj, default=default)))


def now() -> float:
    return time.perf_counter()
