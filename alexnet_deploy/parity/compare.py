"""Compare a candidate's outputs with the PyTorch reference: metrics, gates and a result object."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import numpy as np

from alexnet_deploy.parity.tolerances import Tolerances
from alexnet_deploy.runtime.postprocess import to_probabilities


@dataclass
class SetResult:
    """Metrics of one input set (random inputs, or a labelled dataset)."""

    name: str
    n: int
    metrics: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    candidate: str
    reference: str
    precision: str
    tolerances: Tolerances
    sets: list[SetResult] = field(default_factory=list)
    machine: dict | None = None  # runtime.machine.machine_info() of where the candidate ran
    extra: dict = field(default_factory=dict)  # e.g. the candidate's sha256 and the golden set it was checked on

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sets)

    @property
    def failures(self) -> list[str]:
        return [f"{s.name}: {f}" for s in self.sets for f in s.failures]

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate, "reference": self.reference, "precision": self.precision,
            "passed": self.passed, "tolerances": self.tolerances.as_dict(),
            "sets": [{"name": s.name, "n": s.n, "passed": s.passed, "metrics": s.metrics, "failures": s.failures}
                     for s in self.sets],
            **self.extra,
            **({"machine": self.machine} if self.machine is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def table(self) -> str:
        cols = ["max_abs", "max_rel", "cosine", "top1_agreement", "top5_overlap", "kl", "nonfinite",
                "ref_accuracy_pct", "cand_accuracy_pct", "accuracy_delta_pct"]
        head = ["set", "n", *cols, "gate"]
        rows = [[s.name, str(s.n), *(_fmt(s.metrics.get(c)) for c in cols),
                 ("PASS" if s.passed else "FAIL") + (" (info)" if s.metrics.get("gated") == 0 else "")]
                for s in self.sets]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        line = lambda r: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
        out = [f"parity: {self.candidate} vs {self.reference} ({self.precision} gates)", line(head),
               line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        out += [f"FAIL {f}" for f in self.failures]
        return "\n".join(out)

    def to_junit(self) -> str:
        cases = []
        for s in self.sets:
            body = "".join(f'<failure message="{escape(f, {chr(34): "&quot;"})}"/>' for f in s.failures)
            props = "".join(f'<property name="{k}" value="{_fmt(v)}"/>' for k, v in s.metrics.items())
            cases.append(f'  <testcase classname="alexnet_deploy.parity" name="{escape(s.name)}">'
                         f"<properties>{props}</properties>{body}</testcase>")
        n_fail = sum(not s.passed for s in self.sets)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<testsuite name="parity {escape(self.candidate)}" tests="{len(self.sets)}" failures="{n_fail}">\n'
                + "\n".join(cases) + "\n</testsuite>\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if abs(v) != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}"


def output_metrics(ref: np.ndarray, cand: np.ndarray, output_kind: str = "logits") -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    nonfinite = int((~np.isfinite(cand)).sum())
    cand_f = np.where(np.isfinite(cand), cand, 0.0)
    diff = np.abs(cand_f - ref)
    row_max = np.abs(ref).max(axis=1, keepdims=True)
    significant = np.abs(ref) >= 0.01 * np.maximum(row_max, 1e-12)
    rel = diff[significant] / np.abs(ref[significant])
    cos = (ref * cand_f).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand_f, axis=1) + 1e-30)
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_cand = np.argsort(-cand_f, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)])
    p = to_probabilities(ref, output_kind).astype(np.float64)
    q = to_probabilities(cand_f, output_kind).astype(np.float64)
    kl = np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), axis=1)
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "cosine": float(cos.min()),
        "top1_agreement": float(np.mean(top_ref[:, 0] == top_cand[:, 0])),
        "top5_overlap": float(overlap),
        "kl": float(max(kl.mean(), 0.0)),
        "nonfinite": nonfinite,
    }


_GATES = [  # (metric, tolerance field, kind)
    ("max_abs", "max_abs", "max"), ("max_rel", "max_rel", "max"), ("cosine", "min_cosine", "min"),
    ("top1_agreement", "min_top1_agreement", "min"), ("top5_overlap", "min_top5_overlap", "min"),
    ("kl", "max_kl", "max"), ("accuracy_drop_pct", "max_accuracy_drop_pct", "max"), ("nonfinite", "max_nonfinite", "max"),
]


def gate(metrics: dict[str, float], tol: Tolerances) -> list[str]:
    failures = []
    for metric, tname, kind in _GATES:
        limit = getattr(tol, tname)
        value = metrics.get(metric)
        if limit is None or value is None:
            continue
        bad = value > limit if kind == "max" else value < limit
        if bad or (isinstance(value, float) and math.isnan(value)):
            op = "<=" if kind == "max" else ">="
            failures.append(f"{metric} = {_fmt(value)}, needs {op} {_fmt(limit)}")
    return failures


def compare_outputs(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerances,
                    labels: np.ndarray | None = None, output_kind: str = "logits") -> SetResult:
    metrics = output_metrics(ref, cand, output_kind)
    if labels is not None:
        labels = np.asarray(labels)
        ref_acc = float(np.mean(np.argmax(ref, 1) == labels)) * 100
        cand_acc = float(np.mean(np.argmax(np.nan_to_num(cand, nan=-np.inf), 1) == labels)) * 100
        # units are in the names: *_pct in percent (points for deltas), agreement/overlap as fractions
        metrics.update(ref_accuracy_pct=ref_acc, cand_accuracy_pct=cand_acc, accuracy_delta_pct=cand_acc - ref_acc,
                       accuracy_drop_pct=max(0.0, ref_acc - cand_acc))
    failures = gate(metrics, tol)
    if name == "random" and not tol.gate_random_inputs:
        failures = [f for f in failures if f.startswith("nonfinite")]
        metrics["gated"] = 0
    return SetResult(name, int(len(ref)), metrics, failures)
