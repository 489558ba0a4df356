"""Run the deployment plan: reuse each step whose cache key and files are unchanged, redo the others, then
write report.json, report.md and report.html."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from alexnet_deploy.deploy import folder
from alexnet_deploy.deploy.plan import (REFERENCE, STEP_KINDS, TORCH_ENGINES, DeployOptions, Step, cache_key,
                                        engines_for, kind_of, plan_steps)
from alexnet_deploy.deploy.steps import Context, Skipped, command, key_parts, model_path
from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from alexnet_deploy.runtime.engines import ORT_PROVIDER_CLASSES

log = logging.getLogger(__name__)
PROVENANCE_SCHEMA = "alexnet-deploy.provenance/1"
CHECK_SCHEMA = "alexnet-deploy.check/1"
CHECKS = "checks"  # DIR/checks/: cached parity and benchmark results
# DIR/checks/provenance.json: the sha256 of every check record, as an artifact's provenance.json lists its files
# (a hand-edited record is redone); it also marks checks/ as this command's folder
CHECKS_INDEX, CHECKS_INDEX_SCHEMA = "provenance.json", "alexnet-deploy.checks/1"
REPORT_FILES = ("report.json", "report.md", "report.html")
LOW_DISK_BYTES = 1 << 20  # a library error with less than this free where DIR is: name the full disk as the cause


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
        engines += [e for e, cls in ORT_PROVIDER_CLASSES.items() if e != "ort" and cls in have]
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


def _writes_artifact(step: Step) -> bool:
    return kind_of(step).writes_artifact


def _record_path(out: Path, step: Step) -> Path:
    kind = kind_of(step)
    if kind.writes_artifact:
        return out / step.artifact / "provenance.json"
    return out / CHECKS / kind.record_name(step)


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


def _valid_files(files) -> bool:
    return isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())


def _hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}


def _checks_index(out: Path) -> dict[str, str]:
    """checks/provenance.json: check record file name -> sha256 (empty when missing or not ours)."""
    rec = _read_json(out / CHECKS / CHECKS_INDEX)
    if not rec or rec.get("schema") != CHECKS_INDEX_SCHEMA or not _valid_files(rec.get("files")):
        return {}
    return dict(rec["files"])


def _write_checks_index(out: Path, files: dict[str, str]) -> None:
    atomic_write_json(out / CHECKS / CHECKS_INDEX, {"schema": CHECKS_INDEX_SCHEMA, "files": dict(sorted(files.items())),
                                                   "note": "sha256 of each check record; an edited record is redone"})


def _index_record(out: Path, name: str, sha: str | None) -> None:
    files = _checks_index(out)
    if sha is None:
        if name not in files:
            return
        files.pop(name)
    else:
        files[name] = sha
    _write_checks_index(out, files)


def _reusable(out: Path, step: Step, key: str) -> tuple[dict | None, str]:
    """-> (the record when the step's output can be reused, else None; why it cannot, for the log)."""
    path = _record_path(out, step)
    if not path.exists():
        return None, ""
    record = _read_json(path)
    where = os.path.relpath(path, out)
    if record is None:
        return None, f"{where} is not a JSON object; redone"
    if record.get("cache_key") != key:
        return None, ""  # inputs or options changed: the ordinary rerun
    kind = kind_of(step)
    if kind.writes_artifact:
        files = record.get("files")
        if not _valid_files(files):
            return None, f"{where}: \"files\" is not a mapping of file -> sha256 (edited?); redone"
        if not isinstance(record.get("result", {}), (dict, type(None))):
            return None, f"{where}: \"result\" is not an object (edited?); redone"
        if not _files_ok(out / step.artifact, files):
            return None, f"{step.artifact}/ files differ from {where}; redone"
        return record, ""
    try:
        sha = sha256_file(path)
    except OSError:
        return None, ""
    if _checks_index(out).get(path.name) != sha:
        return None, f"{where} does not match its sha256 in {CHECKS}/{CHECKS_INDEX} (edited?); redone"
    if record.get("status") not in kind.statuses or not isinstance(record.get(kind.payload), dict):
        return None, f"{where} is malformed; redone"
    return record, ""


def _relative_inputs(out: Path, step: Step, input_sha: dict, weights: Path, weights_sha: str) -> dict:
    """Inputs as paths relative to the artifact folder, each with its sha256 (provenance is bytes on disk)."""
    here = out / step.artifact
    rel = {os.path.relpath(model_path(out, a, weights), here): input_sha[a] for a in step.needs}
    if kind_of(step).reads_weights:
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
    from alexnet_deploy.models.weights import check_finite

    check_finite(loaded)  # NaN/Inf weights: one line naming the tensor, before the folder is touched
    if loaded.info.get("preprocessing_unknown"):  # a Keras file that does not say its input normalization
        from alexnet_deploy.models.keras_h5 import preprocessing_unknown_message

        raise UserInputError(preprocessing_unknown_message(opts.weights, options=False))
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
        steps = plan_steps(opts, engines)
        refuse_foreign(out, steps, opts.force, ctx.echo)  # before anything in DIR changes
        folder.remove_leftovers(out)
        return _run_plan(ctx, opts, out, engines, weights, t_start, steps)


# ------------------------------------------------------------------------------------------- ownership
def _not_ours_artifact(out: Path, name: str) -> str | None:
    """Why ``out/name`` is not an artifact folder this command wrote (None: it is ours to redo or remove)."""
    p = out / name
    if p.is_symlink():
        return f"{name} (a symbolic link)"
    if not p.is_dir():
        return f"{name} (a file)"
    rec = _read_json(p / "provenance.json")
    if not rec or rec.get("schema") != PROVENANCE_SCHEMA:
        return f"{name}/ (no alexnet-deploy provenance.json)"
    files = rec.get("files")
    if _valid_files(files):
        try:
            extra = sorted(str(x.relative_to(p)) for x in p.rglob("*")
                           if (x.is_file() or x.is_symlink()) and str(x.relative_to(p)) not in files
                           and x.name != "provenance.json")
        except OSError:
            extra = []
        if extra:
            return f"{name}/{extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "") + \
                f" (not in {name}/provenance.json)"
    return None


def _not_ours_checks(out: Path) -> str | None:
    p = out / CHECKS
    if p.is_symlink():
        return f"{CHECKS} (a symbolic link)"
    if not p.is_dir():
        return f"{CHECKS} (a file)"
    for x in sorted(p.iterdir()):
        rec = _read_json(x) if x.is_file() and not x.is_symlink() and x.suffix == ".json" else None
        if rec is None or rec.get("schema") not in (CHECK_SCHEMA, CHECKS_INDEX_SCHEMA):
            return f"{CHECKS}/{x.name} (not an alexnet-deploy check record)"
    return None


def _not_ours_report(out: Path, name: str) -> str | None:
    from alexnet_deploy.deploy.report_json import REPORT_SCHEMAS

    p = out / name
    if p.is_symlink() or not p.is_file():
        return f"{name} ({'a symbolic link' if p.is_symlink() else 'a folder'})"
    try:
        head = p.read_bytes()[:16384].decode("utf-8", "replace")  # the heading comes after the inline CSS
    except OSError:
        return f"{name} (unreadable)"
    if name.endswith(".json"):
        rec = _read_json(p)
        ours = bool(rec) and rec.get("schema") in REPORT_SCHEMAS
    elif name.endswith(".md"):
        ours = head.startswith("# alexnet-deploy report")
    else:
        ours = "<h1>alexnet-deploy report" in head
    return None if ours else f"{name} (not written by alexnet-deploy)"


def foreign_paths(out: Path, steps: list[Step]) -> list[str]:
    """What in ``out`` shares a name with something this plan writes or replaces but was not written by
    alexnet-deploy (it would be replaced or deleted): artifact folders, checks/, the reports."""
    found = []
    for name in dict.fromkeys(s.artifact for s in steps if _writes_artifact(s)):
        if (out / name).exists() or (out / name).is_symlink():
            if why := _not_ours_artifact(out, name):
                found.append(why)
    if (out / CHECKS).exists() or (out / CHECKS).is_symlink():
        if why := _not_ours_checks(out):
            found.append(why)
    for name in REPORT_FILES:
        if (out / name).exists() or (out / name).is_symlink():
            if why := _not_ours_report(out, name):
                found.append(why)
    return found


def refuse_foreign(out: Path, steps: list[Step], force: bool, echo=print) -> None:
    """A folder or file the user owns is never replaced or emptied: refuse, naming it, unless ``--force``."""
    found = foreign_paths(out, steps)
    if not found:
        return
    if not force:
        raise UserInputError(f"--out {out} holds {'; '.join(found)}, which alexnet-deploy did not write and would "
                             "replace; move it away, choose another --out, or pass --force to replace it")
    echo(f"warning: --force: replacing {'; '.join(found)} in {out}")


# ------------------------------------------------------------------------------------------- reports
def _write_reports(out: Path, report: dict) -> None:
    """report.md, report.html, then report.json (what alexnet-verify reads) last."""
    from alexnet_deploy.deploy import report_html, report_md

    atomic_write_bytes(out / "report.md", report_md.markdown(report).encode())
    atomic_write_bytes(out / "report.html", report_html.render(report).encode())
    atomic_write_json(out / "report.json", report)


def _remove_reports(out: Path) -> None:
    for name in REPORT_FILES:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def _mark_in_progress(ctx: Context, out: Path, steps: list[Step]) -> None:
    """Before the first artifact changes, the reports stop claiming anything: an in-progress report replaces
    them (a killed run, kill -9 included, leaves it; a finished run replaces it). Where even that cannot be
    written (disk full), the old reports are removed."""
    from alexnet_deploy.deploy import report_json

    report = report_json.in_progress(ctx, steps, _read_json(out / "report.json"))
    try:
        _write_reports(out, report)
    except OSError as exc:
        _remove_reports(out)
        ctx.echo(f"warning: could not write the in-progress report ({exc}); removed the old report so it cannot "
                 "describe a folder that is being rewritten")


def _finish_unfinished(ctx: Context, out: Path, steps: list[Step], outcomes: dict, t_start: float,
                       exc: BaseException) -> None:
    """An interrupted run (SIGINT/SIGTERM/SIGHUP) or one that broke off: the report says which steps ran,
    which were reused and which never ran (their files may be from an earlier run), and claims no pass."""
    from alexnet_deploy.deploy import report_json

    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", None)
        import signal as _signal

        why = f"interrupted ({_signal.Signals(signum).name if signum else 'SIGINT'})"
        state = "interrupted"
    else:
        why = f"stopped by an error ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        state = "failed"
    running = next((s.name for s in steps if s.name not in outcomes), None)
    for s in steps:
        if s.name == running:  # its staging folder is gone; what it would have replaced is still there
            reason = (f"{why} while this step ran: nothing of it was kept; files of this step in the folder are "
                      "from an earlier run, unchecked")
        else:
            reason = f"not run: the run was {why} before this step; files of this step may be from an earlier run, unchecked"
        outcomes.setdefault(s.name, StepOutcome(s, "interrupted", reason=reason))
    ours = [p for p in out.iterdir() if not p.name.startswith(".") and p.name not in REPORT_FILES]
    try:
        if not ours:  # nothing of an earlier run or of this one: leave the folder as empty as it was
            _remove_reports(out)
            return
        report = report_json.build(ctx, steps, outcomes, time.perf_counter() - t_start, state=state, note=why)
        _write_reports(out, report)
    except Exception:  # noqa: BLE001 - the in-progress report stays: it claims nothing either
        log.debug("could not write the %s report", state, exc_info=True)


def _run_plan(ctx: Context, opts: DeployOptions, out: Path, engines, weights: Path, t_start: float,
              steps: list[Step]) -> dict:
    echo = ctx.echo
    outcomes: dict[str, StepOutcome] = {}
    input_sha: dict[str, str] = {}  # artifact -> sha256 of its model file (what dependent keys hash)
    available: set[str] = set()
    echo(f"deploying {weights.name} -> {out} ({len(steps)} steps; engines {', '.join(engines)}; the commands "
         f"below run from {out})")
    try:
        ctx.run_info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        ctx.run_info["load_average_start"] = None
    _mark_in_progress(ctx, out, steps)
    try:
        for step in steps:
            outcome = _run_step(ctx, step, input_sha, available)
            outcomes[step.name] = outcome
            if _writes_artifact(step):
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
        _remove_unplanned(out, {s.artifact for s in steps if _writes_artifact(s)},
                          {_record_path(out, s).name for s in steps}, echo)
    except BaseException as exc:
        _finish_unfinished(ctx, out, steps, outcomes, t_start, exc)
        raise
    from alexnet_deploy.deploy import report_json

    report = report_json.build(ctx, steps, outcomes, time.perf_counter() - t_start)
    _write_reports(out, report)
    return report


def _run_step(ctx: Context, step: Step, input_sha: dict, available: set) -> StepOutcome:
    out, opts = ctx.out, ctx.opts
    missing = [a for a in step.needs if a not in available]
    if missing:
        try:
            _drop_record(out, step)  # a check of an artifact that is gone describes nothing in DIR
        except OSError:
            pass
        return StepOutcome(step, "skipped", reason=f"needs {', '.join(missing)}, which was not built")
    t0 = time.perf_counter()
    try:
        parts = key_parts(ctx, step, input_sha)
        key = cache_key(step, parts)
        why_redo = ""
        if not opts.force:
            record, why_redo = _reusable(out, step, key)
            if record is not None:
                return StepOutcome(step, "reused", key, record=record)
        kind = kind_of(step)
        if kind.writes_artifact:
            echo_cmd = command(ctx, step)
            ctx.echo(f"  {step.name}: {echo_cmd}" + (f"  [{why_redo}]" if why_redo else ""))
            with folder.staged_folder(out, step.artifact) as stage:
                echo, final = ctx.echo, str(out / step.artifact)
                ctx.echo = lambda msg="": echo(str(msg).replace(str(stage), final))  # say where it will be
                try:
                    result = kind.run(ctx, step, stage)
                finally:
                    ctx.echo = echo
                _relocate_json(stage, Path(final).resolve())
                record = {"schema": PROVENANCE_SCHEMA, "artifact": step.artifact, "step": step.name,
                          "cache_key": key, "command": echo_cmd, "command_cwd": "..",
                          "inputs": _relative_inputs(out, step, input_sha, opts.weights, ctx.weights_sha256),
                          "key": parts, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "seconds": round(time.perf_counter() - t0, 3), "files": _hash_tree(stage),
                          "result": result}
                atomic_write_json(stage / "provenance.json", record)
        else:
            result = _check(kind, ctx, step)
            record = {"schema": CHECK_SCHEMA, "step": step.name, "cache_key": key, "command": command(ctx, step),
                      "command_cwd": "..", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "seconds": round(time.perf_counter() - t0, 3), **result}
            path = _record_path(out, step)
            _index_record(out, path.name, None)  # unlisted while it changes: a kill here leaves it untrusted
            atomic_write_json(path, record)
            _index_record(out, path.name, sha256_file(path))
    except Skipped as exc:
        _drop_record(out, step)
        return StepOutcome(step, "skipped", reason=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - typed errors, OS errors (disk full) and library exceptions alike
        reason = failure_reason(exc, out, step)
        log.info("step %s failed", step.name, exc_info=True)  # the traceback with -v
        try:
            _drop_record(out, step)
        except OSError:
            pass
        return StepOutcome(step, "failed", reason=reason, seconds=time.perf_counter() - t0,
                           record={"error": type(exc).__name__})
    return StepOutcome(step, "ran", key, reason=why_redo, seconds=time.perf_counter() - t0, record=record)


def run_parity(ctx: Context, step: Step) -> dict:
    """The parity kind's check (deploy/steps.py ParityStep.check)."""
    return STEP_KINDS["parity"].check(ctx, step)


def _check(kind, ctx: Context, step: Step) -> dict:
    # tests/deploy/test_deploy_hardening.py holds a run at a parity step by replacing run.run_parity in a subprocess;
    # this lookup keeps that hook working until it hooks the registry (STEP_KINDS["parity"].check) instead
    return run_parity(ctx, step) if kind is STEP_KINDS["parity"] else kind.check(ctx, step)


_STAGE_RE = re.compile(re.escape(folder.STAGING_PREFIX) + r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_]+")


def failure_reason(exc: BaseException, out: Path, step: Step) -> str:
    """One line naming the file and the cause: a typed error's own message; an OS error's file and strerror;
    another library's exception with its type, what the step was writing, and a full disk where that is it."""
    if isinstance(exc, AlexnetDeployError):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    elif isinstance(exc, OSError):
        where = exc.filename or (f"writing into {out / step.artifact}/" if _writes_artifact(step)
                                 else _record_path(out, step))
        text = f"{where}: {exc.strerror or exc}"
    else:
        msg = str(exc).splitlines()[0][:300] if str(exc).strip() else ""
        target = out / step.artifact if _writes_artifact(step) else _record_path(out, step)
        mod = type(exc).__module__
        name = type(exc).__name__ if mod in ("builtins", "__main__") else f"{mod}.{type(exc).__name__}"
        text = name + (f": {msg}" if msg else "") + f" (while making {target})"
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = None
    if free is not None and free < LOW_DISK_BYTES and "No space left" not in text:
        text += f"; the disk holding {out} is full ({free} bytes free): free space and rerun"
    return _STAGE_RE.sub(r"\1", text)


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
    if not _writes_artifact(step):
        p = _record_path(out, step)
        if p.exists():
            _index_record(out, p.name, None)
            p.unlink()


def _remove_unplanned(out: Path, artifacts: set[str], records: set[str], echo=print) -> None:
    """Artifacts (and cached checks) of an earlier run that this plan no longer makes are removed, so DIR holds
    only what report.json describes. Only what this command wrote goes: folders holding our provenance.json and
    nothing it does not list, check records with our schema."""
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name not in artifacts and p.name != CHECKS \
                and not p.name.startswith("."):
            rec = _read_json(p / "provenance.json")
            if rec and rec.get("schema") == PROVENANCE_SCHEMA:
                if why := _not_ours_artifact(out, p.name):
                    echo(f"  kept {why}: an earlier run's artifact that now holds files alexnet-deploy did not write")
                else:
                    folder.remove_artifact(out, p.name)
    checks = out / CHECKS
    if checks.is_dir() and not checks.is_symlink():
        index = _checks_index(out)
        for p in checks.iterdir():
            if p.suffix == ".json" and p.name not in records and p.name != CHECKS_INDEX:
                rec = _read_json(p)
                if rec and rec.get("schema") == CHECK_SCHEMA:
                    p.unlink()
                    index.pop(p.name, None)
        index = {k: v for k, v in index.items() if (checks / k).is_file()}
        if index != _checks_index(out) or (index and not (checks / CHECKS_INDEX).is_file()):
            _write_checks_index(out, index)


__all__ = ["run_deploy", "resolve_engines", "REFERENCE", "TORCH_ENGINES", "engines_for"]
