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
ROW_FIELDS = ("artifact", "engine", "precision", "status", "size_mb", "top1_accuracy_pct", "top1_agreement",
              "max_logit_error", "batch1_p50_ms", "best_ips", "best_ips_batch", "roofline_fraction", "reason")
STATUSES = ("pass", "fail", "reference", "written", "measured", "skipped", "failed")


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
    return {"batch1_p50_ms": first(b1, "p50_ms"), "best_ips": ips, "best_ips_batch": best.get("batch"),
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


def build(ctx, steps, outcomes: dict, seconds: float) -> dict:
    from alexnet_deploy.benchmarks.machine import machine_info

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
        if b is not None and b.status in ("skipped", "failed"):
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
            if ao.status in ("skipped", "failed"):
                row.update(status=ao.status, reason=ao.reason)
                rows.append(row)
                continue
            po = parity.get((a, e))
            if po is None:
                row.update(status="written", reason="no parity check for this engine")
            elif po.status in ("skipped", "failed"):
                row.update(status=po.status, reason=po.reason)
            else:
                rep = po.record.get("report") or {}
                ds = _dataset_set(rep) or {}
                m = ds.get("metrics") or {}
                row.update(status=po.record.get("status", "pass" if rep.get("passed") else "fail"),
                           top1_accuracy_pct=first(m, "cand_accuracy_pct", "cand_accuracy"),
                           top1_agreement=first(m, "top1_agreement"),
                           max_logit_error=first(m, "max_abs", "max_abs_error"),
                           reason="; ".join(f"{x.get('name')}: {f}" for x in rep.get("sets", [])
                                            for f in x.get("failures", [])))
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
    calib = next((art_outcome[s.artifact].record.get("result") for s in steps if s.kind == "calibrate"
                  and art_outcome[s.artifact].status in ("ran", "reused")), None)
    failed = [r for r in rows if r["status"] in ("fail", "failed")]
    failures = [f"{r['artifact']} / {r['engine']}: {r['reason'] or r['status']}" for r in failed]
    golden = _golden_summary(art_outcome.get(GOLDEN))
    if golden and golden["status"] == "failed":
        failures.append(f"golden: {golden['reason']}")
    from alexnet_deploy.deploy.steps import command

    return {
        "schema": SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": not failures,
        "failures": failures,
        "seconds": round(seconds, 2),
        "inputs": {"weights": str(opts.weights), "weights_sha256": ctx.weights_sha256, "variant": opts.variant,
                   "dataset": opts.dataset, "dataset_id": ctx.dataset_id, "out": str(out.resolve())},
        "options": _options(opts),
        "engines": list(ctx.engines),
        "rows": rows,
        "steps": [outcomes[s.name].as_dict() for s in steps],
        "artifacts": artifacts,
        "commands": {s.name: (artifacts.get(s.artifact, {}).get("command") if s.kind in
                              ("export", "calibrate", "trt", "triton", "golden") else None) or command(ctx, s)
                     for s in steps},
        "golden": golden,
        "calibration": calib,
        "benchmarks": {a: r.get("result") for a, r in bench_records.items()},
        "parity": {f"{a} {e}": o.record.get("report") for (a, e), o in parity.items() if o.status in ("ran", "reused")},
        "machine": {**machine_info(None), "roofline_ceilings": ceilings},
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
