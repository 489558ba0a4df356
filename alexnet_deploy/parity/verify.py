"""``alexnet-verify``: check a deployment folder's artifacts on the machine they are deployed to, against the
folder's golden set, with numpy and the runtime's runners only (no torch, no dataset).

Every artifact's files must still have the sha256 recorded in its ``provenance.json`` (and in ``report.json``):
a changed model is a failing row, never a pass. Each model then runs on this machine's runner (ONNX Runtime
for ``onnx-*``, TensorRT for ``trt-*``), and its outputs are gated against the golden PyTorch FP32 outputs and
labels with the gates the golden set carries for the model's precision (``parity/compare.py``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

from alexnet_deploy.errors import AlexnetDeployError, InferenceError, MissingDependencyError, ModelLoadError, UserInputError
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.parity.compare import ParityReport, _fmt
from alexnet_deploy.parity.golden import GOLDEN_DIR, GoldenIntegrityError, GoldenSet, compare_with_golden, load_golden
from alexnet_deploy.runtime.engines import ENGINE_SUFFIXES, ONNX_ENGINES  # noqa: F401 - ONNX_ENGINES: kept importable here
from alexnet_deploy.runtime.engines import EXPORTED_ENGINES as ENGINES

VERIFY_SCHEMA = "alexnet-deploy.verify/1"
ARTIFACT_SCHEMA = "alexnet-deploy.artifact/1"  # an artifact folder's manifest.json (deploy/steps.py writes it)
PROVENANCE = "provenance.json"
REPORT = "report.json"


@dataclass
class VerifyRow:
    artifact: str
    model: str  # relative to the deployment folder
    engine: str
    status: str  # pass | fail | skipped
    precision: str | None = None
    reason: str = ""
    model_sha256: str | None = None
    report: ParityReport | None = None

    @property
    def metrics(self) -> dict:
        return self.report.sets[0].metrics if self.report and self.report.sets else {}

    def as_dict(self) -> dict:
        return {"artifact": self.artifact, "model": self.model, "engine": self.engine, "precision": self.precision,
                "status": self.status, "reason": self.reason, "model_sha256": self.model_sha256,
                "metrics": _clean(self.metrics), "parity": _clean(self.report.to_dict()) if self.report else None}


@dataclass
class VerifyResult:
    target: str
    folder: Path
    golden: dict
    rows: list[VerifyRow] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    strict: bool = False  # one artifact or an explicit --engine: a skipped row is a failure
    warnings: list[str] = field(default_factory=list)  # about the folder, not a gate (e.g. an unfinished deploy)

    @property
    def passed(self) -> bool:
        ran = [r for r in self.rows if r.status != "skipped"]
        return bool(ran) and all(r.status == "pass" for r in ran) and not (self.strict and len(ran) < len(self.rows))

    @property
    def failures(self) -> list[str]:
        out = [f"{r.artifact} / {r.engine}: {r.reason or r.status}" for r in self.rows if r.status == "fail"]
        if self.strict:
            out += [f"{r.artifact} / {r.engine}: not run here ({r.reason})" for r in self.rows if r.status == "skipped"]
        if not [r for r in self.rows if r.status != "skipped"]:
            out.append("no artifact could run on this machine")
        return out

    def table(self) -> str:
        head = ["artifact", "engine", "precision", "n", "ref acc", "acc", "drop", "agree", "cosine", "max err", "gate"]
        rows = []
        for r in self.rows:
            m = r.metrics
            n = r.report.sets[0].n if r.report and r.report.sets else None

            def pct(k):
                return "-" if m.get(k) is None else f"{m[k]:.2f}%"
            rows.append([r.artifact, r.engine, r.precision or "-", "-" if n is None else str(n), pct("ref_accuracy_pct"),
                         pct("cand_accuracy_pct"), "-" if m.get("accuracy_drop_pct") is None else f"{m['accuracy_drop_pct']:.2f}",
                         "-" if m.get("top1_agreement") is None else f"{100 * m['top1_agreement']:.2f}%",
                         _fmt(m.get("cosine")), _fmt(m.get("max_abs")), r.status.upper()])
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

        def line(r):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        out = [f"verify: {self.target} against {self.golden.get('path')} ({self.golden.get('images')} images, "
               f"{self.golden.get('stored')})", f"machine: {describe_machine(self.machine)}",
               line(head), line(["-" * w for w in widths]), *map(line, rows)]
        out += [f"  {r.artifact} / {r.engine} {r.status.upper()}: {r.reason}" for r in self.rows if r.reason]
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"schema": VERIFY_SCHEMA, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "target": self.target, "folder": str(self.folder), "passed": self.passed, "failures": self.failures,
                "strict": self.strict, "golden": self.golden, "rows": [r.as_dict() for r in self.rows],
                "machine": self.machine, "warnings": self.warnings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_default) + "\n"

    def to_junit(self) -> str:
        cases = []
        for r in self.rows:
            props = "".join(f'<property name="{escape(k)}" value="{escape(_fmt(v))}"/>' for k, v in r.metrics.items())
            msg = escape(r.reason or r.status, {'"': "&quot;"})
            body = (f'<failure message="{msg}"/>' if r.status == "fail" or (r.status == "skipped" and self.strict)
                    else f'<skipped message="{msg}"/>' if r.status == "skipped" else "")
            cases.append(f'  <testcase classname="alexnet_deploy.verify" name="{escape(r.artifact)} {escape(r.engine)}">'
                         f"<properties>{props}</properties>{body}</testcase>")
        n_fail = sum(r.status == "fail" or (r.status == "skipped" and self.strict) for r in self.rows)
        n_skip = sum(r.status == "skipped" and not self.strict for r in self.rows)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<testsuite name="alexnet-verify {escape(self.target)}" tests="{len(self.rows)}" failures="{n_fail}" '
                f'skipped="{n_skip}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def describe_machine(m: dict) -> str:
    isa = m.get("isa") or {}
    flags = [k for k, v in (isa.get("flags") or {}).items() if v]
    ort = m.get("onnxruntime") or {}
    return (f"{m.get('cpu')} ({m.get('cores')} cores, {m.get('machine')}"
            + (f", EMULATED: {m['emulated']}" if m.get("emulated") else "") + ")"
            + f", INT8 kernels {isa.get('int8_kernels', '?')} [{' '.join(flags)}]"
            + (f", onnxruntime {ort.get('version')} ({', '.join(ort.get('providers') or [])})" if ort else "")
            + (f", GPU {m['gpu']}" if m.get("gpu") else ""))


def _default(o):
    return o.item() if hasattr(o, "item") else str(o)


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj.item() if hasattr(obj, "item") else obj


# ------------------------------------------------------------------------------------------------ targets
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{path} is corrupt: not JSON ({str(exc).splitlines()[0][:120]})") from None


def _artifact_manifest(folder: Path) -> dict | None:
    p = folder / "manifest.json"
    if not p.is_file():
        return None
    data = _read_json(p)
    return data if isinstance(data, dict) and data.get("schema") == ARTIFACT_SCHEMA else None


def _is_deployment(folder: Path) -> bool:
    return (folder / GOLDEN_DIR).is_dir() or (folder / REPORT).is_file()


def resolve_target(path: str | Path) -> tuple[Path, list[tuple[str, str]], bool]:
    """-> (deployment folder, [(artifact, model file relative to the folder)], single). ``path``: the folder,
    one artifact folder in it, or one model file of an artifact."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p} not found")
    if p.is_dir() and _is_deployment(p):
        arts = []
        for sub in sorted(x for x in p.iterdir() if x.is_dir() and not x.name.startswith(".")):
            m = _artifact_manifest(sub)
            if m is not None:
                arts.append((sub.name, f"{sub.name}/{m.get('model')}"))
        if not arts:
            raise UserInputError(f"{p} holds no artifacts (folders with an alexnet-deploy manifest.json)")
        return p, arts, False
    if p.is_dir():
        m = _artifact_manifest(p)
        if m is None:
            raise UserInputError(f"{p} is not a deployment folder written by alexnet-deploy (no {GOLDEN_DIR}/, no "
                                 f"{REPORT}) nor an artifact folder in one (no manifest.json)")
        return p.parent, [(p.name, f"{p.name}/{m.get('model')}")], True
    if _artifact_manifest(p.parent) is not None:
        return p.parent.parent, [(p.parent.name, f"{p.parent.name}/{p.name}")], True
    raise UserInputError(f"{p} is not a model inside a deployment folder's artifact; to check a model built "
                         f"elsewhere against a golden set run: alexnet-parity --golden DIR/{GOLDEN_DIR} {p}")


def _engine_for(model: str, kind: str, engine: str | None) -> str | None:
    """The engine that runs ``model`` (None: ``engine`` cannot run it)."""
    is_engine = Path(model).suffix.lower() in ENGINE_SUFFIXES
    if kind == "triton" and not is_engine and not model.endswith(".onnx"):
        return None
    if engine is None:
        return "trt" if is_engine else "ort"
    return engine if (engine == "trt") == is_engine else None


def integrity_problem(folder: Path, artifact: str, model_rel: str) -> tuple[str | None, str | None]:
    """-> (why the artifact cannot be trusted or None, the model's sha256 now)."""
    art = folder / artifact
    model = folder / model_rel
    if not model.is_file():
        return f"{model_rel} is missing", None
    sha = sha256_file(model)
    prov = _read_json(art / PROVENANCE)
    if not isinstance(prov, dict) or not isinstance(prov.get("files"), dict):
        return (f"{artifact}/{PROVENANCE} is missing, so nothing records the sha256 its files had when "
                "alexnet-deploy wrote them"), sha
    files = prov["files"]
    rel = str(Path(model_rel).relative_to(artifact))
    if rel not in files:
        return f"{model_rel} is not one of the files {artifact}/{PROVENANCE} records", sha
    for name, want in files.items():
        p = art / name
        if not p.is_file():
            return f"{artifact}/{name} is missing (recorded in {artifact}/{PROVENANCE})", sha
        if (sha if name == rel else sha256_file(p)) != want:
            return (f"{artifact}/{name} does not match the sha256 in {artifact}/{PROVENANCE} (changed or tampered "
                    "with since alexnet-deploy wrote it)"), sha
    report = _read_json(folder / REPORT)
    if isinstance(report, dict):
        recorded = ((report.get("artifacts") or {}).get(artifact) or {}).get("files") or {}
        if recorded.get(rel) not in (None, files[rel]):
            return f"{model_rel} does not match the sha256 {REPORT} records for it", sha
    return None, sha


# ------------------------------------------------------------------------------------------------ verify
def verify(path: str | Path, engine: str | None = None, tolerances: dict | None = None,
           echo=None) -> VerifyResult:
    """Verify every artifact of a deployment folder (or the one ``path`` names) against its golden set.

    A golden set that does not match its manifest raises :class:`GoldenIntegrityError` (exit 1: nothing is
    verified against it); bad input (no folder, no golden set, a corrupt file) raises :class:`UserInputError`."""
    from alexnet_deploy.runtime.machine import machine_info

    if engine is not None and engine not in ENGINES:
        raise UserInputError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    folder, targets, single = resolve_target(path)
    if not (folder / GOLDEN_DIR).is_dir():
        raise UserInputError(f"{folder} has no golden set ({GOLDEN_DIR}/); deploy it again with this version of "
                             "alexnet-deploy to add one, or check a model with alexnet-parity --golden")
    golden = load_golden(folder / GOLDEN_DIR)
    result = VerifyResult(str(path), folder, golden.summary(), machine=machine_info(None),
                          strict=single or engine is not None)
    report = _read_json(folder / REPORT)
    state = report.get("state") if isinstance(report, dict) else None
    if state in ("in-progress", "interrupted", "failed"):  # each artifact is still checked on its own hashes
        result.warnings.append(f"{folder / REPORT} says the deployment is {state}: the folder may mix artifacts "
                               "of two runs; run alexnet-deploy again to finish it")
    for artifact, model_rel in targets:
        kind = (_artifact_manifest(folder / artifact) or {}).get("kind", "")
        eng = _engine_for(model_rel, kind, engine)
        if kind == "triton":
            if single:
                raise UserInputError(f"{artifact} is a Triton model repository; verify the onnx-* artifacts it was "
                                     "made from (its models are copies of them)")
            continue
        if eng is None:
            if single:
                raise UserInputError(f"--engine {engine} does not run {model_rel}")
            continue
        row = _verify_one(folder, artifact, model_rel, eng, golden, tolerances)
        if echo:
            echo(f"  {artifact} / {eng}: {row.status}" + (f" ({row.reason})" if row.reason else ""))
        result.rows.append(row)
    if not result.rows:
        raise UserInputError(f"no artifact in {folder} runs on --engine {engine}")
    return result


def _verify_one(folder: Path, artifact: str, model_rel: str, engine: str, golden: GoldenSet,
                tolerances: dict | None) -> VerifyRow:
    from alexnet_deploy.runtime.runners.factory import open_runner

    row = VerifyRow(artifact, model_rel, engine, "fail")
    problem, row.model_sha256 = integrity_problem(folder, artifact, model_rel)
    if problem:
        row.reason = problem
        return row
    try:
        runner = open_runner(folder / model_rel, engine)
        row.precision = runner.metadata.precision
        with runner:
            row.report = compare_with_golden(runner, golden, overrides=tolerances)
    except MissingDependencyError as exc:
        row.status, row.reason = "skipped", str(exc)
        return row
    except (ModelLoadError, InferenceError) as exc:
        if engine != "ort":  # an engine or provider this machine's GPU / library cannot run
            row.status, row.reason = "skipped", str(exc).splitlines()[0]
            return row
        row.reason = str(exc).splitlines()[0]
        return row
    except GoldenIntegrityError:
        raise
    except AlexnetDeployError as exc:
        row.reason = str(exc).splitlines()[0]
        return row
    row.status = "pass" if row.report.passed else "fail"
    row.reason = "; ".join(row.report.failures)
    return row


def check_with_golden(candidate: str | Path, golden_path: str | Path, engine: str | None = None,
                      precision: str | None = None, tolerances: dict | None = None) -> ParityReport:
    """``alexnet-parity --golden``: one model file (built anywhere, e.g. an engine built on the device) against
    a golden set; the report carries the model's sha256 and the machine."""
    from alexnet_deploy.runtime.machine import machine_info
    from alexnet_deploy.fileio import printable_path
    from alexnet_deploy.runtime.runners.factory import open_runner

    golden = load_golden(golden_path)
    runner = open_runner(candidate, engine)
    with runner:
        report = compare_with_golden(runner, golden, precision, tolerances)
    report.candidate = f"{printable_path(candidate)} [{runner.describe()}]"
    report.machine = machine_info(None)
    report.extra = {"candidate_sha256": sha256_file(candidate), "golden": golden.summary()}
    return report
