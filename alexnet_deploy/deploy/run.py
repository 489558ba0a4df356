"""Run the deployment plan: reuse each step whose cache key and files are unchanged, redo the others, then
write report.json, report.md and report.html."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from alexnet_deploy.deploy import folder
from alexnet_deploy.deploy.plan import (REFERENCE, TORCH_ENGINES, DeployOptions, Step, cache_key, engines_for,
                                        plan_steps)
from alexnet_deploy.deploy.steps import RUNNERS, Context, Skipped, command, key_parts, model_path, run_bench_step, run_parity
from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.fileio import atomic_write_json, sha256_file

PROVENANCE_SCHEMA = "alexnet-deploy.provenance/1"
CHECK_SCHEMA = "alexnet-deploy.check/1"
CHECKS = "checks"  # DIR/checks/: cached parity and benchmark results


@dataclasses.dataclass
class StepOutcome:
    step: Step
    status: str  # ran | reused | skipped | failed
    key: str | None = None
    reason: str = ""
    seconds: float = 0.0
    record: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.step.name, "kind": self.step.kind, "artifact": self.step.artifact,
                "precision": self.step.precision, "engine": self.step.engine, "status": self.status,
                "cache_key": self.key, "reason": self.reason, "seconds": round(self.seconds, 3)}


def resolve_engines(opts: DeployOptions) -> tuple[str, ...]:
    """``--engines auto``: torch and ORT CPU always; CUDA / TensorRT engines where this machine has them."""
    if opts.engines is not None:
        return tuple(opts.engines)
    engines = ["torch"]
    try:
        import torch

        if torch.cuda.is_available():
            engines.append("torch-cuda")
    except ImportError:
        pass
    engines.append("ort")
    try:
        import onnxruntime

        have = set(onnxruntime.get_available_providers())
        engines += [e for e, p in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider"))
                    if p in have]
    except ImportError:
        pass
    if "trt" in opts.targets:
        engines.append("trt")
    return tuple(engines)


def dataset_id(spec: str) -> dict:
    """What the dataset is, by content: the embedded digits by name, a folder by the sha256 of its files."""
    path = Path(spec)
    if spec == "digits" or not path.exists():
        return {"name": spec}
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + b"\0")
        h.update(sha256_file(p).encode())
    return {"path": str(path.resolve()), "files": len(files), "sha256": h.hexdigest()}


def resolve_dataset(spec: str | None, loaded) -> str:
    """``--dataset`` checked against the model's classes, or (not given) the dataset the checkpoint records."""
    from alexnet_deploy.data.datasets import dataset_for_model

    ds = dataset_for_model(spec, loaded.class_names, str(loaded.info.get("dataset") or ""), "--dataset")
    if ds is None:
        raise UserInputError("alexnet-deploy needs labelled held-out data for parity and INT8 calibration; "
                             "pass --dataset digits | CIFAR-10 folder | ImageFolder tree")
    return ds


def _record_path(out: Path, step: Step) -> Path:
    if step.kind in RUNNERS:
        return out / step.artifact / "provenance.json"
    tail = f"{step.artifact}.{step.engine}.parity.json" if step.kind == "parity" else f"{step.artifact}.bench.json"
    return out / CHECKS / tail


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _files_ok(folder_path: Path, files: dict) -> bool:
    """Every file the record lists is there with the same bytes (sha256), and no other file is."""
    try:
        present = {str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file()}
        if present - {"provenance.json"} != set(files):
            return False
        return all(sha256_file(folder_path / rel) == sha for rel, sha in files.items())
    except OSError:
        return False


def _hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}


def _reusable(out: Path, step: Step, key: str) -> dict | None:
    record = _read_json(_record_path(out, step))
    if record is None or record.get("cache_key") != key:
        return None
    if step.kind in RUNNERS and not _files_ok(out / step.artifact, record.get("files") or {}):
        return None
    return record


def _relative_inputs(out: Path, step: Step, input_sha: dict, weights: Path, weights_sha: str) -> dict:
    """Inputs as paths relative to the artifact folder, each with its sha256 (provenance is bytes on disk)."""
    here = out / step.artifact
    rel = {os.path.relpath(model_path(out, a, weights), here): input_sha[a] for a in step.needs}
    if step.kind in ("export", "golden"):
        rel[os.path.relpath(weights, here)] = weights_sha
    return rel


def run_deploy(opts: DeployOptions, echo: Callable[[str], None] = print) -> dict:
    opts.validate()
    weights = Path(opts.weights)
    if not weights.is_file():
        raise UserInputError(f"--weights {weights} not found (give an alexnet-train checkpoint or a state_dict file)")
    opts = dataclasses.replace(opts, weights=weights.resolve(), out=Path(opts.out))
    inputs = {"--weights": opts.weights}
    if opts.dataset and opts.dataset != "digits" and Path(opts.dataset).exists():
        inputs["--dataset"] = Path(opts.dataset)
    folder.refuse_overlap(opts.out, inputs)
    from alexnet_deploy.models.weights import load_model

    loaded = load_model(opts.variant, str(opts.weights))  # a checkpoint that does not load stops here, one line
    given = opts.dataset
    opts.dataset = resolve_dataset(opts.dataset, loaded)
    if not given:
        echo(f"dataset: {opts.dataset} (recorded in {weights.name})")
    if opts.dataset != "digits" and Path(opts.dataset).exists():
        folder.refuse_overlap(opts.out, {"--weights": opts.weights, "--dataset": Path(opts.dataset)})
    t_start = time.perf_counter()
    engines = resolve_engines(opts)
    ctx = Context(opts, sha256_file(opts.weights), dataset_id(opts.dataset), engines, echo, _loaded=loaded)
    out = folder.prepare(opts.out)
    with folder.locked(out):
        folder.remove_leftovers(out)
        return _run_plan(ctx, opts, out, engines, weights, t_start)


def _run_plan(ctx: Context, opts: DeployOptions, out: Path, engines, weights: Path, t_start: float) -> dict:
    echo = ctx.echo
    steps = plan_steps(opts, engines)
    outcomes: dict[str, StepOutcome] = {}
    input_sha: dict[str, str] = {}  # artifact -> sha256 of its model file (what dependent keys hash)
    available: set[str] = set()
    echo(f"deploying {weights.name} -> {out} ({len(steps)} steps; engines {', '.join(engines)})")
    for step in steps:
        outcome = _run_step(ctx, step, input_sha, available)
        outcomes[step.name] = outcome
        if step.kind in RUNNERS:
            if outcome.status in ("ran", "reused"):
                available.add(step.artifact)
                mp = model_path(out, step.artifact, opts.weights)
                if mp.is_file():
                    input_sha[step.artifact] = sha256_file(mp)
            else:
                folder.remove_artifact(out, step.artifact)  # an artifact that is not valid any more goes
        label = {"ran": "done", "reused": "up to date", "skipped": "skipped", "failed": "FAILED"}[outcome.status]
        echo(f"  {step.name:<28} {label}" + (f" ({outcome.seconds:.1f} s)" if outcome.status == "ran" else "")
             + (f": {outcome.reason}" if outcome.reason else ""))
    _remove_unplanned(out, {s.artifact for s in steps if s.kind in RUNNERS}, {_record_path(out, s).name for s in steps})
    from alexnet_deploy.deploy import report_html, report_json, report_md

    report = report_json.build(ctx, steps, outcomes, time.perf_counter() - t_start)
    atomic_write_json(out / "report.json", report)
    from alexnet_deploy.fileio import atomic_write_bytes

    atomic_write_bytes(out / "report.md", report_md.markdown(report).encode())
    atomic_write_bytes(out / "report.html", report_html.render(report).encode())
    return report


def _run_step(ctx: Context, step: Step, input_sha: dict, available: set) -> StepOutcome:
    out, opts = ctx.out, ctx.opts
    missing = [a for a in step.needs if a not in available]
    if missing:
        return StepOutcome(step, "skipped", reason=f"needs {', '.join(missing)}, which was not built")
    t0 = time.perf_counter()
    try:
        parts = key_parts(ctx, step, input_sha)
        key = cache_key(step, parts)
        if not opts.force:
            record = _reusable(out, step, key)
            if record is not None:
                return StepOutcome(step, "reused", key, record=record)
        if step.kind in RUNNERS:
            echo_cmd = command(ctx, step)
            ctx.echo(f"  {step.name}: {echo_cmd}")
            with folder.staged_folder(out, step.artifact) as stage:
                echo, final = ctx.echo, str(out / step.artifact)
                ctx.echo = lambda msg="": echo(str(msg).replace(str(stage), final))  # say where it will be
                try:
                    result = RUNNERS[step.kind](ctx, step, stage)
                finally:
                    ctx.echo = echo
                _relocate_json(stage, Path(final).resolve())
                record = {"schema": PROVENANCE_SCHEMA, "artifact": step.artifact, "step": step.name,
                          "cache_key": key, "command": echo_cmd,
                          "inputs": _relative_inputs(out, step, input_sha, opts.weights, ctx.weights_sha256),
                          "key": parts, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "seconds": round(time.perf_counter() - t0, 3), "files": _hash_tree(stage),
                          "result": result}
                atomic_write_json(stage / "provenance.json", record)
        else:
            result = run_parity(ctx, step) if step.kind == "parity" else run_bench_step(ctx, step)
            record = {"schema": CHECK_SCHEMA, "step": step.name, "cache_key": key, "command": command(ctx, step),
                      "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "seconds": round(time.perf_counter() - t0, 3), **result}
            atomic_write_json(_record_path(out, step), record)
    except Skipped as exc:
        _drop_record(out, step)
        return StepOutcome(step, "skipped", reason=str(exc), seconds=time.perf_counter() - t0)
    except AlexnetDeployError as exc:
        _drop_record(out, step)
        return StepOutcome(step, "failed", reason=str(exc).splitlines()[0], seconds=time.perf_counter() - t0)
    return StepOutcome(step, "ran", key, seconds=time.perf_counter() - t0, record=record)


def _relocate_json(stage: Path, final: Path) -> None:
    """Paths into the staging folder that a stage recorded (an engine manifest's ``source_onnx``) name the
    artifact's final folder instead, so nothing points at a folder that is gone after the rename."""
    prefixes = {str(stage), str(stage.resolve())}

    def fix(v):
        if isinstance(v, str):
            for pre in prefixes:
                if v == pre or v.startswith(pre + os.sep):
                    return str(final) + v[len(pre):]
            return v
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    for path in stage.rglob("*.json"):
        data = _read_json(path)
        if data is not None and (fixed := fix(data)) != data:
            atomic_write_json(path, fixed)


def _drop_record(out: Path, step: Step) -> None:
    if step.kind not in RUNNERS:
        p = _record_path(out, step)
        if p.exists():
            p.unlink()


def _remove_unplanned(out: Path, artifacts: set[str], records: set[str]) -> None:
    """Artifacts (and cached checks) of an earlier run that this plan no longer makes are removed, so DIR holds
    only what report.json describes. Only folders this command wrote (they hold our provenance.json) go."""
    for p in out.iterdir():
        if p.is_dir() and p.name not in artifacts and p.name != CHECKS and not p.name.startswith("."):
            rec = _read_json(p / "provenance.json")
            if rec and rec.get("schema") == PROVENANCE_SCHEMA:
                folder.remove_artifact(out, p.name)
    checks = out / CHECKS
    if checks.is_dir():
        for p in checks.iterdir():
            if p.suffix == ".json" and p.name not in records:
                p.unlink()


__all__ = ["run_deploy", "resolve_engines", "REFERENCE", "TORCH_ENGINES", "engines_for"]
