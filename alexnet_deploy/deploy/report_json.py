"""report.json: one row per (artifact, engine) with status, size, accuracy, agreement, error, latency,
throughput and fraction of roofline; plus the steps, the artifacts' reproduce commands, the calibration,
the benchmarks and the machine. Field names of the stage results are read defensively (they evolve)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from alexnet_deploy.deploy.plan import GOLDEN, REFERENCE, engines_for
from alexnet_deploy.deploy.steps import MODEL_FILES, model_path

SCHEMA = "alexnet-deploy.deploy-report/1"
REPORT_SCHEMAS = (SCHEMA,)  # what marks report.json as ours (alexnet-deploy --out refuses to replace others)
ROW_FIELDS = ("artifact", "engine", "precision", "status", "size_mb", "top1_accuracy_pct", "top1_agreement",
              "max_logit_error", "batch1_p50_ms", "batch1_p90_ms", "batch1_p99_ms", "best_ips", "best_ips_batch",
              "roofline_fraction", "reason", "next_step")
STATUSES = ("pass", "fail", "reference", "written", "measured", "skipped", "failed", "interrupted")
# report.json "state": complete (every step ran or was reused), interrupted (a signal), failed (the run broke
# off), in-progress (written before the first artifact changes; a finished run replaces it)
STATES = ("complete", "interrupted", "failed", "in-progress")
# what each parity gate measures (parity/compare.py): "cosine" there is the minimum over images, while
# calibrate's table reports the mean: the report names each for what it is
GATE_NAMES = {"cosine": "min cosine per image", "max_abs": "max |logit error|", "max_rel": "max relative error",
              "top1_agreement": "top-1 agreement", "top5_overlap": "top-5 overlap", "kl": "mean KL divergence",
              "accuracy_drop_pct": "accuracy drop (points)", "nonfinite": "non-finite outputs"}
_GATE_RE = __import__("re").compile(r"\b(cosine|max_abs|max_rel|top1_agreement|top5_overlap|kl|accuracy_drop_pct|"
                                    r"nonfinite) = ([^,;]+), needs ([<>]=) ([^,;\s]+)")


def first(d: dict | None, *names, default=None):
    """The first of ``names`` present (not None) in ``d``: result fields are being renamed (units in names)."""
    for n in names:
        if d and d.get(n) is not None:
            return d[n]
    return default


def _dataset_set(report: dict | None) -> dict | None:
    sets = (report or {}).get("sets") or []
    real = [s for s in sets if not str(s.get("name", "")).startswith("random")]
    return real[0] if real else (sets[0] if sets else None)


def _size_mb(path: Path) -> float | None:
    if path.is_file():
        return os.path.getsize(path) / 1e6
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return None


def _bench_rows(bench_record: dict | None, engine: str) -> list[dict]:
    rows = ((bench_record or {}).get("result") or {}).get("rows") or []
    return [r for r in rows if r.get("engine") == engine and r.get("mode", "end-to-end") == "end-to-end"]


def _bench_figures(rows: list[dict], cost: dict | None = None, ceilings: dict | None = None) -> dict:
    """batch-1 p50, best img/s (and its batch) and the best row's fraction of its roofline. ``cost`` and
    ``ceilings`` fill the fraction in for rows alexnet-bench could not cost (the PyTorch checkpoint)."""
    measured = [r for r in rows if not r.get("skipped") and first(r, "throughput_ips", "images_per_s")]
    if not measured:
        skipped = next((r.get("skipped") for r in rows if r.get("skipped")), None)
        return {"bench_skipped": skipped} if skipped else {}
    b1 = next((r for r in measured if r.get("batch") == 1), None)
    best = max(measured, key=lambda r: first(r, "throughput_ips", "images_per_s"))
    ips = first(best, "throughput_ips", "images_per_s")
    frac = first(best, "fraction_of_attainable", "fraction_of_roofline", "fraction_of_peak", "roofline_fraction")
    if frac is None and cost and ceilings:
        frac = _roofline_fraction(cost, ceilings, best.get("batch") or 1, ips)
    return {"batch1_p50_ms": first(b1, "p50_ms"), "batch1_p90_ms": first(b1, "p90_ms"),
            "batch1_p99_ms": first(b1, "p99_ms"), "best_ips": ips, "best_ips_batch": best.get("batch"),
            "roofline_fraction": frac}


def _roofline_fraction(cost: dict, ceilings: dict, batch: int, ips: float) -> float | None:
    try:
        from alexnet_deploy.benchmarks.cost import roofline

        return roofline(cost["flops_per_image"], cost["weight_bytes"], batch, ips, ceilings["fp32_gemm_gflops"],
                        ceilings["memory_bandwidth_gbs"])["fraction_of_attainable"]
    except (ImportError, KeyError, TypeError, ValueError):
        peak = first(ceilings, "fp32_gemm_gflops", "peak_gflops")
        return cost["flops_per_image"] * ips / 1e9 / peak if peak and cost.get("flops_per_image") else None


def _ceilings(result: dict | None) -> dict | None:
    if not result:
        return None
    if result.get("ceilings"):
        return result["ceilings"]
    return {"fp32_gemm_gflops": result["peak_gflops"]} if result.get("peak_gflops") else None


def _named_gates(reason: str) -> str:
    """parity's failure lines with each metric named for what it is ("cosine" -> "min cosine per image")."""
    # only the ambiguous one is renamed: the others keep parity's metric names (what --tol takes)
    return _GATE_RE.sub(lambda m: f"{GATE_NAMES['cosine'] if m[1] == 'cosine' else m[1]} = {m[2]}, needs {m[3]} {m[4]}",
                        reason or "")


def _gate_failures(reason: str) -> list[tuple[str, str, str]]:
    """(metric, measured, limit) of each failed gate in parity's failure lines."""
    return [(m[1], m[2].strip(), m[4]) for m in _GATE_RE.finditer(reason or "")]


_TOL_NAMES = {"max_abs": "max_abs", "max_rel": "max_rel", "cosine": "min_cosine", "top1_agreement": "min_top1_agreement",
              "top5_overlap": "min_top5_overlap", "kl": "max_kl", "accuracy_drop_pct": "max_accuracy_drop_pct",
              "nonfinite": "max_nonfinite"}


_MIN_GATES = {"cosine", "top1_agreement", "top5_overlap"}


def _accepting(metric: str, value: float) -> str:
    """A --tol value the measured ``value`` passes (the failure line's 4-digit rounding may not: 0.99998 is
    printed 1.0000): rounded down for minimum gates, up for maximum ones, to 3-6 significant digits."""
    import math

    if metric in _MIN_GATES:
        return f"{math.floor(value * 1e6) / 1e6:g}"
    if value <= 0:
        return "0"
    step = 10 ** (math.floor(math.log10(value)) - 2)
    return f"{math.ceil(value / step) * step:.3g}"


def _tol_hint(report: dict | None, raw_reason: str) -> str:
    """``--tol NAME=VALUE`` for each failed gate, from the measured metrics (worst over the failing sets)."""
    worst: dict[str, float] = {}
    for st in (report or {}).get("sets") or []:
        for m, _, _ in _gate_failures("; ".join(st.get("failures") or [])):
            v = (st.get("metrics") or {}).get(m)
            if m in _TOL_NAMES and isinstance(v, (int, float)):
                worst[m] = min(worst.get(m, v), v) if m in _MIN_GATES else max(worst.get(m, v), v)
    if not worst:  # no metrics: the failure lines' own figures
        worst = {m: float(v) for m, v, _ in _gate_failures(raw_reason) if m in _TOL_NAMES
                 and v.replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit()}
    return " ".join(f"--tol {_TOL_NAMES[m]}={_accepting(m, v)}" for m, v in worst.items())


def next_step(row: dict, raw_reason: str, calib: dict | None, opts, parity_report: dict | None = None) -> str | None:
    """What to try after a failed gate: for INT8, the layer to keep in float (the calibration's sensitivity
    data) and the --max-drop that keeps it; for FP16/FP32, what the measured difference means."""
    from alexnet_deploy.deploy.steps import deploy_command

    tol = _tol_hint(parity_report, raw_reason)
    prec = row.get("precision")
    if prec == "int8":
        chosen = (calib or {}).get("chosen") or {}
        sens = [r for r in (calib or {}).get("sensitivity") or [] if r.get("layer")]
        drop = chosen.get("drop_pct")
        if sens:
            top = sens[0]
            d_top = top.get("drop_with_layer_float")
            what = (f"the most sensitive layer is {top['layer']} (kept in float: {top.get('gain_points', 0):+.2f} "
                    f"points, top-1 agreement {first(top, 'top1_agreement', default=0):.1%})")
            if drop is not None and d_top is not None and d_top < drop:
                import math

                max_drop = max(0.0, math.ceil(d_top * 100) / 100)
                return (f"keep {top['layer']} in float: {what}; rerun with --max-drop {max_drop:g}: "
                        f"{deploy_command(opts, max_drop=max_drop)}")
            return (f"{what}, but --max-drop cannot select it (the INT8 accuracy drop is already "
                    f"{(drop or 0):.2f} points); try another calibration: {deploy_command(opts, calib_method='auto')}"
                    + (f"; or accept the measured value: {tol}" if tol else ""))
        if drop is not None and drop > 0:
            return f"keep the most sensitive layers in float: {deploy_command(opts, max_drop=0.0, sensitivity=True)}"
        return f"see which layer to keep in float (per-layer sensitivity): {deploy_command(opts, sensitivity=True)}"
    if prec == "fp16":
        return ("FP16 rounding exceeds the gate: deploy the FP32 artifact for this model"
                + (f", or accept the measured difference with {tol}" if tol else ""))
    return ("FP32 should match PyTorch to rounding: rerun the parity command (Reproduce, below) to see the failing "
            "set" + (f"; {tol} only if this difference is expected" if tol else ""))


def git_commit() -> dict:
    """alexnet-deploy's version and, from a git checkout, its commit (and whether it had local changes)."""
    import subprocess

    from alexnet_deploy import __version__

    info = {"version": __version__, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return info
    try:
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10, check=True).stdout.strip() or None
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                             "alexnet_deploy"], capture_output=True, text=True, timeout=10, check=True)
        info["git_dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def in_progress(ctx, steps, previous: dict | None) -> dict:
    """The report written before the first artifact changes: it claims nothing (no rows, passed false)."""
    from alexnet_deploy.deploy.steps import COMMANDS_RUN_FROM, deploy_command

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prev = {k: previous.get(k) for k in ("created_utc", "state", "passed")} if isinstance(previous, dict) else None
    return {
        "schema": SCHEMA, "state": "in-progress", "created_utc": now, "passed": False,
        "failures": [f"alexnet-deploy started rewriting this folder at {now} (pid {os.getpid()}) and has not "
                     "finished: artifacts may be a mix of an earlier run and this one, none is vouched for; if no "
                     "alexnet-deploy is running, it was killed: run the command again"],
        "command": deploy_command(ctx.opts), "commands_run_from": COMMANDS_RUN_FROM,
        "planned_steps": [s.name for s in steps], "previous_report": prev,
        "alexnet_deploy": git_commit(), "rows": [], "steps": [], "artifacts": {}, "commands": {},
    }


def build(ctx, steps, outcomes: dict, seconds: float, state: str = "complete", note: str | None = None) -> dict:
    from alexnet_deploy.runtime.machine import machine_info

    opts, out = ctx.opts, ctx.out
    by_name = {n: o for n, o in outcomes.items()}
    art_outcome = {s.artifact: by_name[s.name] for s in steps
                   if s.kind in ("export", "calibrate", "trt", "triton", "golden")}
    parity = {(s.artifact, s.engine): by_name[s.name] for s in steps if s.kind == "parity"}
    bench = {s.artifact: by_name[s.name] for s in steps if s.kind == "bench"}
    bench_records = {a: o.record for a, o in bench.items() if o.status in ("ran", "reused")}
    ceilings = next((_ceilings(r.get("result")) for r in bench_records.values() if _ceilings(r.get("result"))), None)
    # FLOPs and weight bytes per image of the FP32 graph (alexnet-bench costs ONNX files, keyed by file name)
    fp32_costs = (((bench_records.get("onnx-fp32") or {}).get("result") or {}).get("costs") or {})
    fp32_cost = fp32_costs.get(MODEL_FILES["onnx"])

    calib = next((art_outcome[s.artifact].record.get("result") for s in steps if s.kind == "calibrate"
                  and art_outcome[s.artifact].status in ("ran", "reused")), None)
    rows: list[dict] = []
    ref_acc = None
    for o in parity.values():
        s = _dataset_set(o.record.get("report")) if o.status in ("ran", "reused") else None
        if s and ref_acc is None:
            ref_acc = first(s.get("metrics"), "ref_accuracy_pct", "ref_accuracy")
    for e in engines_for(REFERENCE, ctx.engines):
        row = {"artifact": REFERENCE, "engine": e, "precision": "fp32", "status": "reference",
               "size_mb": _size_mb(opts.weights), "top1_accuracy_pct": ref_acc, "top1_agreement": 1.0,
               "max_logit_error": 0.0, "reason": "the PyTorch FP32 checkpoint every artifact is compared with"}
        b = bench.get(REFERENCE)
        row.update(_bench_figures(_bench_rows(bench_records.get(REFERENCE), e), fp32_cost,
                                  ceilings if e == "torch" else None))
        if b is not None and b.status in ("skipped", "failed", "interrupted"):
            row["reason"] = b.reason
        rows.append(row)
    for s in steps:
        if s.kind not in ("export", "calibrate", "trt"):
            continue
        a, ao = s.artifact, art_outcome[s.artifact]
        size = _size_mb(model_path(out, a, opts.weights)) if ao.status in ("ran", "reused") else None
        engines = engines_for(a, ctx.engines) or (("trt",) if a.startswith("trt") else ("ort",))
        for e in engines:
            row = {"artifact": a, "engine": e, "precision": s.precision, "size_mb": size}
            if ao.status in ("skipped", "failed", "interrupted"):
                row.update(status=ao.status, reason=ao.reason)
                rows.append(row)
                continue
            po = parity.get((a, e))
            if po is None:
                row.update(status="written", reason="no parity check for this engine")
            elif po.status in ("skipped", "failed", "interrupted"):
                row.update(status=po.status, reason=po.reason)
            else:
                rep = po.record.get("report") or {}
                ds = _dataset_set(rep) or {}
                m = ds.get("metrics") or {}
                raw = "; ".join(f"{x.get('name')}: {f}" for x in rep.get("sets", []) for f in x.get("failures", []))
                row.update(status=po.record.get("status", "pass" if rep.get("passed") else "fail"),
                           top1_accuracy_pct=first(m, "cand_accuracy_pct", "cand_accuracy"),
                           top1_agreement=first(m, "top1_agreement"),
                           max_logit_error=first(m, "max_abs", "max_abs_error"), reason=_named_gates(raw))
                if row["status"] == "fail":
                    row["next_step"] = next_step(row, raw, calib, opts, rep)
            row.update(_bench_figures(_bench_rows(bench_records.get(a), e)))
            if row.get("bench_skipped") and not row.get("reason") and row["status"] != "skipped":
                row["reason"] = "benchmark skipped: " + row["bench_skipped"]
            rows.append(row)
    if "triton" in art_outcome:
        t = art_outcome["triton"]
        ok = t.status in ("ran", "reused")
        rows.append({"artifact": "triton", "engine": "triton", "precision": ",".join(opts.built_precisions),
                     "status": "written" if ok else t.status,
                     "size_mb": _size_mb(out / "triton" / "model_repository") if ok else None,
                     "reason": "serve: tritonserver --model-repository triton/model_repository" if ok else t.reason})
    rows = [{k: r.get(k) for k in ROW_FIELDS} for r in rows]

    artifacts = {}
    for s in steps:
        if s.kind in ("export", "calibrate", "trt", "triton", "golden"):
            o = art_outcome[s.artifact]
            rec = o.record if o.status in ("ran", "reused") else {}
            artifacts[s.artifact] = {"step": s.name, "status": o.status, "folder": s.artifact,
                                     "files": rec.get("files"), "command": rec.get("command"),
                                     "cache_key": o.key, "reason": o.reason}
    golden = _golden_summary(art_outcome.get(GOLDEN))
    # failures: one per failed parity gate and one per step that failed with an error (the header counts both)
    row_of = {(r["artifact"], r["engine"]): r for r in rows}
    gate_failed = [s for s in steps if s.kind == "parity" and by_name[s.name].status in ("ran", "reused")
                   and by_name[s.name].record.get("status") == "fail"]
    errored = [s for s in steps if by_name[s.name].status == "failed"]
    interrupted = [s for s in steps if by_name[s.name].status == "interrupted"]
    failures = [f"{s.artifact} / {s.engine}: {(row_of.get((s.artifact, s.engine)) or {}).get('reason') or 'gate failed'}"
                for s in gate_failed]
    failures += [f"{s.name}: {by_name[s.name].reason}" for s in errored]
    if interrupted:
        failures.append(f"{note or 'the run did not finish'}: {len(interrupted)} step(s) not run "
                        f"({', '.join(s.name for s in interrupted[:6])}{' ...' if len(interrupted) > 6 else ''})")
    step_counts = {k: sum(1 for s in steps if by_name[s.name].status == k)
                   for k in ("ran", "reused", "skipped", "failed", "interrupted")}
    gate_steps = [s for s in steps if s.kind == "parity" and by_name[s.name].status in ("ran", "reused")]
    counts = {"steps": step_counts, "gates": {"passed": len(gate_steps) - len(gate_failed), "failed": len(gate_failed)},
              "errors": len(errored), "interrupted": len(interrupted)}
    from alexnet_deploy.deploy.steps import COMMANDS_RUN_FROM, command, rel

    return {
        "schema": SCHEMA,
        "state": state,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": not failures and state == "complete",
        "failures": failures,
        "counts": counts,
        "seconds": round(seconds, 2),
        "alexnet_deploy": git_commit(),
        "inputs": {"weights": str(opts.weights), "weights_relative": rel(opts.weights, out),
                   "weights_sha256": ctx.weights_sha256, "variant": opts.variant,
                   "dataset": opts.dataset, "dataset_id": ctx.dataset_id, "out": str(out.resolve())},
        "options": _options(opts),
        "engines": list(ctx.engines),
        "rows": rows,
        "steps": [outcomes[s.name].as_dict() for s in steps],
        "artifacts": artifacts,
        "commands": {s.name: (artifacts.get(s.artifact, {}).get("command") if s.kind in
                              ("export", "calibrate", "trt", "triton", "golden") else None) or command(ctx, s)
                     for s in steps},
        "commands_run_from": COMMANDS_RUN_FROM,
        "golden": golden,
        "calibration": calib,
        "benchmarks": {a: r.get("result") for a, r in bench_records.items()},
        "parity": {f"{a} {e}": o.record.get("report") for (a, e), o in parity.items() if o.status in ("ran", "reused")},
        "machine": {**machine_info(None), "load_average_start": (getattr(ctx, "run_info", None) or {}).get(
            "load_average_start"), "roofline_ceilings": ceilings},
    }


def _golden_summary(outcome) -> dict | None:
    """What DIR/golden holds now (None when this plan has no golden step)."""
    if outcome is None:
        return None
    ok = outcome.status in ("ran", "reused")
    res = (outcome.record.get("result") or {}) if ok else {}
    return {"status": "written" if ok else outcome.status, "folder": GOLDEN, "manifest": f"{GOLDEN}/manifest.json",
            "images": res.get("images"), "stored": res.get("stored"), "labelled": res.get("labelled"),
            "size_mb": round(res["bytes"] / 1e6, 3) if res.get("bytes") else None, "reason": outcome.reason,
            "verify": "alexnet-verify DIR (on the target, with alexnet-deploy[runtime] only)" if ok else None}


def _options(opts) -> dict:
    return {"precisions": list(opts.precisions), "targets": list(opts.targets), "batch_sizes": list(opts.batch_sizes),
            "bench_duration_s": opts.bench_duration_s, "bench_iterations": opts.bench_iterations,
            "bench_warmup_ms": opts.bench_warmup_ms, "roofline": opts.roofline, "parity_images": opts.parity_images,
            "golden_images": opts.golden_images, "random_samples": opts.random_samples, "tolerances": opts.tolerances, "calib_images": opts.calib_images,
            "calib_method": opts.calib_method, "sensitivity": opts.sensitivity, "max_drop": opts.max_drop,
            "trt_library": opts.trt_library, "compute_capability": opts.compute_capability,
            "workspace_mb": opts.workspace_mb, "triton_kind": opts.triton_kind, "force": opts.force}
