"""The steps of `alexnet-deploy`, each a thin call of a stage's public API. Every step kind is one class
registered with ``@register_step`` (deploy/plan.py's registry): the steps it plans, what it reads (its cache
key), what it writes into its staging folder (or its check record) and the command that reproduces it alone."""
from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from alexnet_deploy.deploy.plan import (GOLDEN, REFERENCE, STEP_KINDS, DeployOptions, Step, StepKind, engines_for,
                                        kind_of, onnx_artifact, register_step, trt_artifact)
from alexnet_deploy.errors import InferenceError, MissingDependencyError, ModelLoadError

ARTIFACT_SCHEMA = "alexnet-deploy.artifact/1"
MODEL_FILES = {"onnx": "model.onnx", "trt": "model.plan"}
# Q/DQ placements (calibration/placement.py placement_for): onnx-int8 is for ONNX Runtime (fast INT8 CPU kernels,
# logits float); trt-int8 is built from its own QDQ ONNX with TensorRT's placement, kept beside the engine
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


# ------------------------------------------------------------------------------------------- registry use
def key_parts(ctx: Context, step: Step, input_sha: dict[str, str]) -> dict:
    """What decides a step's output besides its name: input sha256s (``input_sha``: artifact -> model sha256),
    options and library versions (the step kind's :meth:`~StepKind.key`). Only the options a step uses are in
    its key."""
    from alexnet_deploy import __version__

    base = {"inputs": {a: input_sha[a] for a in step.needs}, "alexnet_deploy": __version__}
    return {**base, **kind_of(step).key(ctx, step, input_sha)}


def command(ctx: Context, step: Step) -> str:
    """The exact command line that makes this step's output alone, run from the deployment folder (paths
    relative to it: ``cd DIR`` first; :data:`COMMANDS_RUN_FROM`)."""
    return kind_of(step).command(ctx, step)


def _placement(target: str):
    """The Q/DQ placement of ``target``'s INT8 models (imported here: onnx is an optional dependency)."""
    from alexnet_deploy.calibration.placement import placement_for

    return placement_for(target)


def _calibration_key(ctx: Context, placement) -> dict:
    o = ctx.opts
    return {"dataset": ctx.dataset_id, "images": o.calib_images, "method": o.calib_method, "placement": placement,
            "sensitivity": o.sensitivity, "max_drop": o.max_drop, "eval_images": o.parity_images,
            "versions": _versions("onnxruntime", "onnx")}


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
@register_step("export")
class ExportStep(StepKind):
    """The FP32 and FP16 ONNX exports of the checkpoint (INT8 is the calibrate step's)."""

    reads_weights = True

    def plan(self, opts, engines, models):
        out = []
        for p in opts.built_precisions:
            if p != "int8":
                out.append(Step(f"export {p}", self.name, onnx_artifact(p), p))
                models.append(onnx_artifact(p))
        return out

    def key(self, ctx, step, input_sha):
        o = ctx.opts
        return {"weights": str(o.weights), "weights_sha256": ctx.weights_sha256, "variant": o.variant,
                "precision": step.precision, "versions": _versions("torch", "onnx", "onnxsim", "onnxruntime")}

    def command(self, ctx, step):
        o = ctx.opts
        variant = ["--variant", o.variant] if o.variant else []
        return " ".join(["alexnet-export onnx", "--weights", _q(rel(o.weights, o.out.resolve())), *variant, "-o",
                         _q(f"{step.artifact}/model.onnx"), *(["--fp16"] if step.precision == "fp16" else [])])

    def run(self, ctx, step, stage):
        from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx

        # the parity step gates every artifact on the user's dataset; the exporter's own check would repeat it
        res = export_onnx(ctx.loaded, stage / "model.onnx", ExportOptions(fp16=step.precision == "fp16", check=False))
        _sidecars(stage, "onnx", "model.onnx", res.metadata)
        return {"folded_batchnorms": list(res.folded_batchnorms), "simplified": bool(res.simplified)}


def _calibrate(ctx: Context, src: Path, output: Path, placement):
    """The INT8 calibration of ``src`` with the deployment's options (calibration/run.py)."""
    from alexnet_deploy.calibration import run

    o = ctx.opts
    opts = run.CalibrationOptions(dataset=o.dataset, num_images=o.calib_images, eval_images=o.parity_images,
                                  method=o.calib_method, sensitivity=o.sensitivity, max_drop=o.max_drop,
                                  placement=placement)
    return run.calibrate(src, output, opts, echo=_indent(ctx.echo))


@register_step("calibrate")
class CalibrateStep(StepKind):
    """onnx-int8: the FP32 export calibrated with ONNX Runtime's Q/DQ placement."""

    def plan(self, opts, engines, models):
        if "int8" not in opts.built_precisions:
            return []
        models.append(onnx_artifact("int8"))
        return [Step("calibrate int8", self.name, onnx_artifact("int8"), "int8", needs=(onnx_artifact("fp32"),))]

    def key(self, ctx, step, input_sha):
        return _calibration_key(ctx, _placement("onnx"))

    def command(self, ctx, step):
        return _calibrate_command(ctx.opts, f"{step.artifact}/model.onnx", ["--placement", _placement("onnx").value])

    def run(self, ctx, step, stage):
        from alexnet_deploy.runtime.metadata import read_onnx_metadata

        res = _calibrate(ctx, ctx.opts.out / step.needs[0] / "model.onnx", stage / "model.onnx", _placement("onnx"))
        _sidecars(stage, "onnx", "model.onnx", read_onnx_metadata(stage / "model.onnx"))
        # the model is this folder's model.onnx: no absolute path of the staging folder in the record
        return _jsonable({k: v for k, v in res.to_dict().items() if k != "output"})


@register_step("trt")
class TrtStep(StepKind):
    """trt-<precision>: TensorRT engines; INT8 ones from their own QDQ ONNX with TensorRT's placement."""

    def plan(self, opts, engines, models):
        if "trt" not in opts.targets:
            return []
        out = []
        for p in opts.built_precisions:
            # INT8 engines are calibrated from FP32 with TensorRT's Q/DQ placement (onnx-int8 has ONNX Runtime's)
            out.append(Step(f"trt {p}", self.name, trt_artifact(p), p,
                            needs=(onnx_artifact("fp32" if p == "int8" else p),)))
            models.append(trt_artifact(p))
        return out

    def key(self, ctx, step, input_sha):
        from alexnet_deploy.runtime.trt_library import load_library

        o = ctx.opts
        try:
            lib = load_library(o.trt_library)
        except MissingDependencyError as exc:
            raise Skipped(str(exc)) from None
        calib = {"calibration": _calibration_key(ctx, _placement("trt"))} if step.precision == "int8" else {}
        return {"library": [lib.name, lib.version], "max_batch": o.max_batch, "workspace_mb": o.workspace_mb,
                "compute_capability": o.compute_capability, **calib}

    def command(self, ctx, step):
        o = ctx.opts
        src = f"{step.needs[0]}/model.onnx"
        calib = ""
        if step.precision == "int8":  # TensorRT's placement, calibrated into the engine's folder
            src = f"{step.artifact}/{TRT_INT8_ONNX}"
            calib = _calibrate_command(o, src, ["--placement", _placement("trt").value]) + " && "
        extra = ["--library", o.trt_library] if o.trt_library != "auto" else []
        if o.compute_capability:
            extra += ["--compute-capability", o.compute_capability]
        if o.workspace_mb != 1024:
            extra += ["--workspace-mb", str(o.workspace_mb)]
        return calib + " ".join(["alexnet-export trt", _q(src), "-o", _q(f"{step.artifact}/model.plan"),
                                 "--precision", step.precision or "fp32", "--max-batch", str(o.max_batch), *extra])

    def run(self, ctx, step, stage):
        from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
        from alexnet_deploy.runtime.metadata import ModelMetadata

        o = ctx.opts
        src = o.out / step.needs[0] / "model.onnx"
        if step.precision == "int8":  # a QDQ ONNX with TensorRT's Q/DQ placement (onnx-int8 has ONNX Runtime's)
            _calibrate(ctx, src, stage / TRT_INT8_ONNX, _placement("trt"))
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


@register_step("golden")
class GoldenStep(StepKind):
    """DIR/golden: held-out inputs, labels, PyTorch outputs and gates for alexnet-verify (needs no artifact)."""

    reads_weights = True

    def plan(self, opts, engines, models):
        return [Step("golden", self.name, GOLDEN)]

    def key(self, ctx, step, input_sha):
        from alexnet_deploy.parity.golden_write import gates_for
        from alexnet_deploy.parity.golden import FLOAT_INPUTS_MAX_BYTES, GOLDEN_SCHEMA

        o = ctx.opts
        # the gates themselves (project defaults + --tol) are in the key: changed defaults rewrite gates.json
        return {"schema": GOLDEN_SCHEMA, "weights_sha256": ctx.weights_sha256, "variant": o.variant,
                "dataset": ctx.dataset_id, "images": o.golden_images, "input_format": _export_input_format(),
                "float_inputs_max_bytes": FLOAT_INPUTS_MAX_BYTES, "gates": gates_for(o.tolerances),
                "versions": _versions("torch", "numpy", "PIL")}

    def command(self, ctx, step):  # written by alexnet-deploy itself: the command that makes this folder
        return deploy_command(ctx.opts)

    def run(self, ctx, step, stage):
        from alexnet_deploy.deploy.golden import write_golden

        o = ctx.opts
        return write_golden(ctx.loaded, o.dataset, o.golden_images, stage, tolerances=o.tolerances,
                            dataset_id=ctx.dataset_id, input_format=_export_input_format(), echo=_indent(ctx.echo))


class _RunHooks(MutableMapping):
    """artifact kind name -> its run callable ``(ctx, step, stage)``: a view of the registry. Replacing an entry
    replaces that kind's run (tests/deploy/test_deploy_hardening.py hooks ``RUNNERS["golden"]`` in a subprocess)."""

    def __getitem__(self, name):
        kind = STEP_KINDS.get(name)
        if kind is None or not kind.writes_artifact:
            raise KeyError(name)
        return kind.run

    def __setitem__(self, name, fn):
        self[name]  # noqa: B018 - KeyError for a check kind or an unknown name
        STEP_KINDS[name].run = fn

    def __delitem__(self, name):
        self[name]  # noqa: B018
        STEP_KINDS[name].__dict__.pop("run", None)

    def __iter__(self):
        return (n for n, k in STEP_KINDS.items() if k.writes_artifact)

    def __len__(self):
        return sum(1 for _ in self)


RUNNERS = _RunHooks()


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
def _model_sha(ctx: Context, step: Step, input_sha: dict) -> str:
    return ctx.weights_sha256 if step.artifact == REFERENCE else input_sha[step.artifact]


@register_step("parity")
class ParityStep(StepKind):
    """checks/<artifact>.<engine>.parity.json: each model on each engine against the PyTorch FP32 reference."""

    writes_artifact = False
    statuses, payload = ("pass", "fail"), "report"

    def plan(self, opts, engines, models):
        return [Step(f"parity {a} {e}", self.name, a, a.split("-", 1)[1], e, needs=(a,))
                for a in models for e in engines_for(a, engines)]

    def record_name(self, step):
        return f"{step.artifact}.{step.engine}.parity.json"

    def key(self, ctx, step, input_sha):
        o = ctx.opts
        return {"model_sha256": _model_sha(ctx, step, input_sha), "weights_sha256": ctx.weights_sha256,
                "engine": step.engine, "dataset": ctx.dataset_id, "images": o.parity_images,
                "random_samples": o.random_samples, "tolerances": o.tolerances,
                "versions": _versions("onnxruntime", "torch", "tensorrt", "tensorrt_rtx")}

    def command(self, ctx, step):
        o = ctx.opts
        out = o.out.resolve()
        model = rel(model_path(o.out, step.artifact, o.weights), out)
        tol = [f"--tol {k}={v}" for k, v in o.tolerances.items()]
        return " ".join(["alexnet-parity", _q(model), "--engine", step.engine or "ort", "--reference",
                         _q(rel(o.weights, out)), "--dataset", _q(_dataset_arg(o.dataset, out)), "--num-images",
                         str(o.parity_images), "--random-samples", str(o.random_samples), *tol])

    def check(self, ctx, step):
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


@register_step("bench")
class BenchStep(StepKind):
    """checks/<artifact>.bench.json: each model (and the checkpoint) on its engines."""

    writes_artifact = False
    statuses = ("measured",)

    def plan(self, opts, engines, models):
        return [Step(f"bench {a}", self.name, a, "fp32" if a == REFERENCE else a.split("-", 1)[1],
                     needs=() if a == REFERENCE else (a,))
                for a in [*models, REFERENCE] if engines_for(a, engines)]

    def key(self, ctx, step, input_sha):
        from alexnet_deploy.runtime.machine import machine_info

        o = ctx.opts
        machine = {k: v for k, v in machine_info(None).items() if k not in ("threads", "load_average")}
        return {"model_sha256": _model_sha(ctx, step, input_sha), "engines": engines_for(step.artifact, ctx.engines),
                "batch_sizes": list(o.batch_sizes), "duration_s": o.bench_duration_s,
                "iterations": o.bench_iterations, "warmup_ms": o.bench_warmup_ms, "roofline": o.roofline,
                "machine": machine}

    def command(self, ctx, step):
        o = ctx.opts
        model = rel(model_path(o.out, step.artifact, o.weights), o.out.resolve())
        engines = ",".join(engines_for(step.artifact, ctx.engines))
        timing = (["--iterations", str(o.bench_iterations)] if o.bench_iterations
                  else ["--duration-s", str(o.bench_duration_s)])
        return " ".join(["alexnet-bench", _q(model), "--engine", engines, "--batch-sizes",
                         ",".join(map(str, o.batch_sizes)), "--warmup-ms", f"{o.bench_warmup_ms:g}", *timing,
                         *([] if o.roofline else ["--no-roofline"])])

    def check(self, ctx, step):
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


# the triton kind is registered after bench: its config.pbtxt declares dynamic_batching from the batch that
# measured best (checks/<artifact>.bench.json), so the bench records of this run must exist when its key is made.
# Nothing reads the Triton repository back (no parity or bench of it), so running it last costs nothing.
@register_step("triton")
class TritonStep(StepKind):
    """triton/model_repository: one Triton model per ONNX artifact (alexnet-<precision>) and one tensorrt_plan
    model per TensorRT engine built in this run (alexnet-trt-<precision>); dynamic_batching prefers the batch
    that measured best for the engine Triton would run it with."""

    def plan(self, opts, engines, models):
        if "triton" not in opts.targets:
            return []
        # the engines are optional inputs (read in key/run): without a TensorRT builder the ONNX models still go in
        return [Step("triton", self.name, "triton", needs=tuple(onnx_artifact(p) for p in opts.built_precisions))]

    def key(self, ctx, step, input_sha):
        from alexnet_deploy.fileio import sha256_file
        from alexnet_deploy.runtime.trt_library import manifest_path

        o = ctx.opts
        engines = {a: {"plan": sha256_file(plan), "manifest": sha256_file(manifest_path(plan))}
                   for a, plan in _triton_engines(o).items()}
        measured = {a: m and {"batch": m["batch"], "record_sha256": m["record_sha256"]}
                    for a, m in _triton_measured(ctx, step).items()}
        return {"max_batch": o.max_batch, "kind": triton_kind(o), "preferred": _preferred(o), "engines": engines,
                "measured": measured}

    def command(self, ctx, step):
        o = ctx.opts
        lines = []
        for a, (src, name, preferred, _) in _triton_models(ctx, step).items():
            pref = ",".join(map(str, preferred))
            kind = [] if a.startswith("trt-") else ["--kind", triton_kind(o)]
            lines.append(" ".join(["alexnet-export triton", _q(f"{a}/{src.name}"), "--repo",
                                   _q("triton/model_repository"), "--name", name, "--max-batch", str(o.max_batch),
                                   *kind, *(["--preferred-batch", pref] if pref else [])]))
        return " && ".join(lines)

    def run(self, ctx, step, stage):
        from alexnet_deploy.exporter.triton import export_triton, tensorrt_rtx_note
        from alexnet_deploy.fileio import sha256_file
        from alexnet_deploy.runtime.metadata import read_onnx_metadata
        from alexnet_deploy.runtime.trt_library import read_manifest

        o = ctx.opts
        names, batching, engines = [], {}, {}
        rtx: dict[str, list[str]] = {}  # TensorRT-RTX "name version" -> the Triton models holding its engines
        for a, (src, name, preferred, measured) in _triton_models(ctx, step).items():
            plan = a.startswith("trt-")
            export_triton(src, stage / "model_repository", name=name, max_batch=o.max_batch,
                          kind=None if plan else triton_kind(o), preferred=preferred, echo=_indent(ctx.echo),
                          note_tensorrt_rtx=False)
            if plan and (lib := read_manifest(src).get("library") or {}).get("name") == "tensorrt_rtx":
                rtx.setdefault(f"{lib.get('name')} {lib.get('version')}", []).append(name)
            names.append(name)
            batching[name] = {"preferred_batch_size": preferred, "max_queue_delay_microseconds": 2000,
                              "from": measured or (f"no measurement of {_triton_bench_engine(a, triton_kind(o))} in "
                                                   "this run: the --batch-sizes above 1")}
            if plan:  # an optional input (not in provenance.json's inputs): named here with its bytes
                engines[name] = {"artifact": a, "platform": "tensorrt_plan",
                                 "engine": f"../{a}/{src.name}", "engine_sha256": sha256_file(src)}
        for library, models in rtx.items():  # once for the repository, not once per engine
            _indent(ctx.echo)(tensorrt_rtx_note(models, library))
        meta = read_onnx_metadata(o.out / step.needs[0] / "model.onnx")
        _sidecars(stage, "triton", "model_repository", meta,
                  {"models": names, "serve": "tritonserver --model-repository model_repository",
                   "dynamic_batching": batching, "tensorrt_models": engines})
        return {"models": names, "dynamic_batching": {n: b["preferred_batch_size"] for n, b in batching.items()}}


def _triton_engines(o: DeployOptions) -> dict[str, Path]:
    """trt-<precision> -> its model.plan, for the engines this run built or reused (a trt step that failed or was
    skipped has had its folder removed before the triton step, which runs after it)."""
    if "trt" not in o.targets:
        return {}
    out = {}
    for p in o.built_precisions:
        plan = o.out / trt_artifact(p) / MODEL_FILES["trt"]
        if plan.is_file() and (plan.parent / "provenance.json").is_file():
            out[trt_artifact(p)] = plan
    return out


def _triton_bench_engine(artifact: str, kind: str) -> str:
    """The engine whose measurements describe the artifact under Triton: TensorRT for a plan; ONNX Runtime CPU
    for an ONNX model on KIND_CPU, its CUDA provider on KIND_GPU (Triton's onnxruntime backend runs CUDA there)."""
    if artifact.startswith("trt-"):
        return "trt"
    return "ort-cuda" if kind == "gpu" else "ort"


def _best_measured(ctx: Context, artifact: str, engine: str) -> dict | None:
    """The batch with the highest measured throughput of ``artifact`` on ``engine``, from this run's bench record
    checks/<artifact>.bench.json (trusted only when its sha256 is in checks/provenance.json, as run.py reuses it;
    a bench step that failed or was skipped has dropped its record). None without a measurement."""
    from alexnet_deploy.deploy.run import CHECKS, CHECKS_INDEX, CHECKS_INDEX_SCHEMA
    from alexnet_deploy.fileio import sha256_file

    if engine not in ctx.engines:  # the bench step of this artifact does not measure that engine in this plan
        return None
    name = STEP_KINDS["bench"].record_name(Step(f"bench {artifact}", "bench", artifact))
    path = ctx.out / CHECKS / name
    try:
        index = json.loads((ctx.out / CHECKS / CHECKS_INDEX).read_text())
        record = json.loads(path.read_text())
        sha = sha256_file(path)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("schema") != CHECKS_INDEX_SCHEMA or not isinstance(record, dict) \
            or (index.get("files") or {}).get(name) != sha or record.get("status") != "measured" \
            or record.get("step") != f"bench {artifact}":
        return None
    rows = [r for r in ((record.get("result") or {}).get("rows") or []) if isinstance(r, dict)
            and r.get("engine") == engine and r.get("mode", "end-to-end") == "end-to-end" and not r.get("skipped")
            and isinstance(r.get("throughput_ips"), (int, float)) and isinstance(r.get("batch"), int)
            and 1 <= r["batch"] <= ctx.opts.max_batch]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["throughput_ips"], -r["batch"]))  # a tie goes to the smaller batch
    return {"record": f"{CHECKS}/{name}", "record_sha256": sha, "measured_utc": record.get("created_utc"),
            "engine": engine, "batch": best["batch"], "throughput_ips": best["throughput_ips"],
            "throughput_by_batch": {str(r["batch"]): r["throughput_ips"] for r in sorted(rows, key=lambda r: r["batch"])}}


def _triton_measured(ctx: Context, step: Step) -> dict[str, dict | None]:
    kind = triton_kind(ctx.opts)
    return {a: _best_measured(ctx, a, _triton_bench_engine(a, kind))
            for a in [*step.needs, *_triton_engines(ctx.opts)]}


def _triton_models(ctx: Context, step: Step) -> dict[str, tuple[Path, str, list[int], dict | None]]:
    """artifact -> (model file, Triton model name, preferred batch sizes, the measurement they came from)."""
    from alexnet_deploy.exporter.triton import onnx_model_name, plan_model_name

    o = ctx.opts
    measured = _triton_measured(ctx, step)
    models = {a: (o.out / a / MODEL_FILES["onnx"], onnx_model_name(a.split("-", 1)[1])) for a in step.needs}
    models.update({a: (plan, plan_model_name(a.split("-", 1)[1])) for a, plan in _triton_engines(o).items()})
    return {a: (src, name, [measured[a]["batch"]] if measured[a] else _preferred(o), measured[a])
            for a, (src, name) in models.items()}


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
