"""INT8 study (issue 11): Q/DQ placement (tensorrt, ort, all), calibration methods, NVIDIA Model Optimizer.

For each variant (``cifar10``: digits at 32x32, ``bn``: digits at 128x128) it trains or reuses a digits
checkpoint (cached under artifacts/int8/), exports FP32 ONNX, calibrates on 500 class-balanced training images
with both placements and all three methods, and reports held-out accuracy, top-1 agreement, logit error,
Q/DQ counts, ONNX Runtime CPU latency (batch 1 and 32, every model in one interleaved run) and TensorRT-RTX
engine size. With ``--modelopt-python`` (a Python that has ``nvidia-modelopt[onnx]``, kept in its own
virtualenv) the same FP32 models and calibration images go through Model Optimizer's ONNX PTQ as well.

    python -m alexnet_deploy.studies.int8_placement --variant cifar10 --variant bn \\
        --modelopt-python /tmp/venv-modelopt/bin/python --out docs/benchmarks/int8-placement.json

Benchmarks are not tests: this prints tables and writes JSON + Markdown; nothing here is run by pytest.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("cifar10", "bn")  # trained by int4_study.train_variant with its RECIPES
ARTIFACTS = Path("artifacts/int8")
SHARED_CHECKPOINTS = {"bn": Path("artifacts/int4/bn-digits.pt")}  # issue 13's study trains the same recipe
PLACEMENTS = ("tensorrt", "ort", "all")
METHODS = ("minmax", "entropy", "percentile")
MODELOPT_METHODS = ("max", "entropy")
MAX_DROP = 0.1  # the target, in points: layers are kept in float (sensitivity order) until it holds
LATENCY = {"batches": (1, 32), "rounds": 7, "runs_per_round": {1: 20, 32: 3}, "threads": 2}


def checkpoint(variant: str, root: Path) -> Path:
    path = root / f"{variant}-digits.pt"
    if path.is_file():
        return path
    shared = SHARED_CHECKPOINTS.get(variant)
    if shared is not None and shared.is_file():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, path)
        print(f"{variant}: reusing {shared}")
        return path
    from alexnet_deploy.studies.int4_study import train_variant

    return train_variant(variant, root, progress=False)


def fp32_onnx(variant: str, root: Path) -> Path:
    from alexnet_deploy.exporter.onnx_export import export_onnx
    from alexnet_deploy.models.weights import load_model

    path = root / f"{variant}-fp32.onnx"
    if not path.is_file():
        export_onnx(load_model(None, str(checkpoint(variant, root))), path)
    return path


def engine_bytes(onnx_path: Path, root: Path) -> dict:
    """TensorRT-RTX engine size for a QDQ (or FP32) ONNX, built ahead of time for sm86 without a GPU."""
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    try:
        precision = read_onnx_metadata(onnx_path).precision
        plan = root / (onnx_path.stem + ".plan")
        res = build_engine(onnx_path, plan, TrtBuildOptions(precision=precision), echo=lambda *_: None)
        return {"engine_bytes": res.manifest["engine_bytes"], "library": res.manifest["library"],
                "target": res.manifest["target_compute_capability"], "build_seconds": round(res.seconds, 1)}
    except Exception as exc:  # a benchmark row, not a failure of the study
        return {"engine_error": f"{type(exc).__name__}: {exc}"[:300]}


def latency(models: dict[str, Path], input_name: str, shape: tuple[int, ...]) -> dict:
    """Median ms per batch for every model, rounds interleaved so that load from other jobs hits all alike."""
    import onnxruntime as ort

    sessions = {}
    for name, path in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = LATENCY["threads"]
        so.inter_op_num_threads = 1
        sessions[name] = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    out = {}
    rng = np.random.default_rng(0)
    for b in LATENCY["batches"]:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        times = {n: [] for n in sessions}
        for s in sessions.values():
            s.run(None, {input_name: x})
        for _ in range(LATENCY["rounds"]):
            for n, s in sessions.items():
                for _ in range(LATENCY["runs_per_round"][b]):
                    t0 = time.perf_counter()
                    s.run(None, {input_name: x})
                    times[n].append((time.perf_counter() - t0) * 1e3)
        out[f"batch{b}"] = {n: {"median_ms": round(float(np.median(t)), 3), "min_ms": round(float(np.min(t)), 3),
                                "p90_ms": round(float(np.percentile(t, 90)), 3), "runs": len(t)}
                            for n, t in times.items()}
    return out


def run_modelopt(python: str, fp32: Path, npz: Path, method: str, out: Path, exclude: list[str]) -> dict:
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(fp32), "--quantize_mode", "int8",
           "--calibration_method", method, "--calibration_data_path", str(npz), "--calibration_eps", "cpu",
           "--high_precision_dtype", "fp32", "--output_path", str(out)]
    if exclude:  # the layers our --max-drop kept in float, so that both tools quantize the same layers
        cmd += ["--nodes_to_exclude", *exclude]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    info = {"command": " ".join(Path(c).name if c == python else c for c in cmd), "seconds": round(time.perf_counter() - t0, 1),
            "returncode": p.returncode}
    if p.returncode != 0 or not out.is_file():
        info["error"] = (p.stderr or p.stdout)[-1500:]
    return info


def study(variant: str, root: Path, modelopt_python: str | None) -> dict:
    import onnx

    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.placement import count_qdq
    from alexnet_deploy.calibration.evaluate import Evaluator
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.runtime.metadata import read_onnx_metadata, set_metadata

    fp32 = fp32_onnx(variant, root)
    meta = read_onnx_metadata(fp32)
    row: dict = {"variant": variant, "input_size": meta.input_shape[1:], "fp32_onnx": fp32.name}
    t0 = time.perf_counter()
    cal = load_calibration_set("digits", meta, 500, "train")
    held = load_calibration_set("digits", meta, 1000, "heldout")
    evaluate = Evaluator(fp32, meta, held)
    row["calibration_images"], row["heldout_images"] = len(cal.x), len(held.x)
    row["fp32_heldout_accuracy_pct"] = 100 * float(np.mean(evaluate.ref.argmax(1) == held.labels))
    models = {"fp32": fp32}
    row["placements"] = {}
    for placement in PLACEMENTS:
        out = root / f"{variant}-int8-{placement}.onnx"
        t1 = time.perf_counter()
        res = calibrate(fp32, out, method="auto", placement=placement, max_drop=MAX_DROP, echo=lambda *_: None)
        row["placements"][placement] = {
            "chosen": res.chosen.method, "seconds": round(time.perf_counter() - t1, 1),
            "chosen_row": res.chosen.row(), "sensitivity": res.sensitivity,
            "dead_input_channels_zeroed": res.provenance.get("dead_input_channels_zeroed"),
            "qdq_nodes": res.qdq_nodes, "methods": {e.method: e.row() for e in res.tried},
            "ranges_changed_vs_minmax": {m: sum(abs(res.ranges[m][t] - res.ranges["minmax"][t]) > 1e-6 * max(res.ranges["minmax"][t], 1e-12)
                                                for t in res.ranges["minmax"]) for m in res.ranges},
            "tensors": len(res.ranges["minmax"]), "onnx_bytes": out.stat().st_size,
            **engine_bytes(out, root)}
        models[f"int8-{placement}"] = out
        print(f"{variant} {placement}: chosen {res.chosen.method}, drop {res.chosen.drop:+.2f}, "
              f"agreement {res.chosen.agreement:.2%}, Q/DQ {res.qdq_nodes}")
    row["fp32_engine"] = {**engine_bytes(fp32, root), "onnx_bytes": fp32.stat().st_size}
    if modelopt_python:
        npz = root / f"{variant}-calib500.npz"
        np.savez(npz, **{meta.input_name: cal.x})
        row["modelopt"] = {}
        from alexnet_deploy.calibration.placement import layer_names

        layers = layer_names(onnx.load(str(fp32)))
        kept = row["placements"]["tensorrt"]["chosen_row"]["kept_float"]
        runs = [(m, []) for m in MODELOPT_METHODS] + [(m, kept) for m in MODELOPT_METHODS if kept]
        for method, keep in runs:
            tag = method + ("-keep-" + "-".join(keep) if keep else "")
            out = root / f"{variant}-modelopt-{tag}.onnx"
            info = run_modelopt(modelopt_python, fp32, npz, method, out, [layers[k] for k in keep])
            info["kept_float"] = keep
            if "error" not in info:
                q = onnx.load(str(out))
                set_metadata(q, dataclasses.replace(meta, precision="int8", extra={**meta.extra,
                             "calibration": {"tool": "nvidia-modelopt", "method": method, "num_images": len(cal.x)}}))
                onnx.save(q, str(out))
                ev = evaluate(out, f"modelopt-{method}", keep)
                info.update(ev.row(), qdq_nodes=count_qdq(q), onnx_bytes=out.stat().st_size, **engine_bytes(out, root))
                models[f"modelopt-{tag}"] = out
            row["modelopt"][tag] = info
            print(f"{variant} modelopt {method}: {info.get('drop_pct', info.get('error', '')[-200:])}")
    row["ort_cpu_latency"] = latency(models, meta.input_name, meta.input_shape)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(doc: dict) -> str:
    lines = ["# INT8: Q/DQ placement, calibration methods and NVIDIA Model Optimizer", "",
             f"Machine: {doc['machine']}. Rerun: `{doc['command']}`.", "",
             "Held-out: the digits held-out split; calibration: 500 class-balanced training images; per-channel "
             "symmetric INT8 weights; activations symmetric INT8 (tensorrt, all) or UINT8 asymmetric (ort); float biases "
             "(ort: INT32 on its float-output last Gemm); auto = best held-out accuracy.", ""]
    for r in doc["variants"]:
        lines += [f"## {r['variant']} ({r['input_size'][0]}x{r['input_size'][1]}), FP32 held-out "
                  f"{r['fp32_heldout_accuracy_pct']:.2f} % on {r['heldout_images']} images", "",
                  "| model | method | INT8 acc % | drop pts | top-1 agree | logit max-abs err | logit cosine | Q / DQ nodes | ONNX | TRT-RTX engine |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p, d in r["placements"].items():
            for m, e in d["methods"].items():
                mark = " (auto)" if m == d["chosen"] else ""
                written = m == d["chosen"] and not d.get("chosen_row", {}).get("kept_float")
                eng = f"{d['engine_bytes'] / 1e6:.2f} MB" if written and "engine_bytes" in d else ""
                lines.append(f"| ours, placement `{p}` | {m}{mark} | {e['int8_accuracy_pct']:.2f} | {e['drop_pct']:+.2f} | "
                             f"{e['top1_agreement']:.2%} | {e['logit_max_abs_error']:.3f} | {e['logit_cosine']:.5f} | "
                             f"{d['qdq_nodes']['QuantizeLinear']} / {d['qdq_nodes']['DequantizeLinear']} | "
                             f"{d['onnx_bytes'] / 1e6:.2f} MB | {eng} |")
        for p, d in r["placements"].items():
            e = d.get("chosen_row")
            if e and e["kept_float"]:
                lines.append(f"| ours, placement `{p}`, --max-drop {MAX_DROP} | {e['method']}, float: "
                             f"{', '.join(e['kept_float'])} | {e['int8_accuracy_pct']:.2f} | {e['drop_pct']:+.2f} | "
                             f"{e['top1_agreement']:.2%} | {e['logit_max_abs_error']:.3f} | {e['logit_cosine']:.5f} | "
                             f"{d['qdq_nodes']['QuantizeLinear']} / {d['qdq_nodes']['DequantizeLinear']} | "
                             f"{d['onnx_bytes'] / 1e6:.2f} MB | {d['engine_bytes'] / 1e6 if 'engine_bytes' in d else 0:.2f} MB |")
        for m, e in (r.get("modelopt") or {}).items():
            if "error" in e:
                lines.append(f"| Model Optimizer | {m} | failed: {e['error'].strip().splitlines()[-1][:120]} | | | | | | | |")
                continue
            eng = f"{e['engine_bytes'] / 1e6:.2f} MB" if "engine_bytes" in e else e.get("engine_error", "")[:80]
            lines.append(f"| Model Optimizer | {m} | {e['int8_accuracy_pct']:.2f} | {e['drop_pct']:+.2f} | "
                         f"{e['top1_agreement']:.2%} | {e['logit_max_abs_error']:.3f} | {e['logit_cosine']:.5f} | "
                         f"{e['qdq_nodes']['QuantizeLinear']} / {e['qdq_nodes']['DequantizeLinear']} | "
                         f"{e['onnx_bytes'] / 1e6:.2f} MB | {eng} |")
        fe = r.get("fp32_engine", {})
        if "engine_bytes" in fe:
            lines.append(f"| FP32 | - | {r['fp32_heldout_accuracy_pct']:.2f} | | | | | 0 / 0 | "
                         f"{fe['onnx_bytes'] / 1e6:.2f} MB | {fe['engine_bytes'] / 1e6:.2f} MB |")
        lines += ["", "Ranges that differ from minmax (of "
                  f"{r['placements']['tensorrt']['tensors']} tensors, placement tensorrt): "
                  + ", ".join(f"{m} {n}" for m, n in r["placements"]["tensorrt"]["ranges_changed_vs_minmax"].items()), "",
                  "ONNX Runtime CPU latency, ms per batch, median (min) over the same run, rounds interleaved:", "",
                  "| model | batch 1 | batch 32 | batch 1 vs int8-all | batch 32 vs int8-all |", "|---|---|---|---|---|"]
        lat = r["ort_cpu_latency"]
        base = {b: lat[f"batch{b}"].get("int8-all", {}).get("median_ms") for b in (1, 32)}
        for name in lat["batch1"]:
            ms = [lat[f"batch{b}"][name]["median_ms"] for b in (1, 32)]
            rel = [f"{m / base[b]:.2f}x" if base[b] else "" for m, b in zip(ms, (1, 32))]
            mins = [lat[f"batch{b}"][name].get("min_ms", float("nan")) for b in (1, 32)]
            lines.append(f"| {name} | {ms[0]:.2f} ({mins[0]:.2f}) | {ms[1]:.2f} ({mins[1]:.2f}) | {rel[0]} | {rel[1]} |")
        lines.append("")
    lines += ["## Notes", "", doc.get("notes", ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", choices=VARIANTS)
    p.add_argument("--modelopt-python", default=None, help="Python of a virtualenv with nvidia-modelopt[onnx].")
    p.add_argument("--work", type=Path, default=ARTIFACTS)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/int8-placement.json"))
    p.add_argument("--notes", type=Path, default=Path("docs/benchmarks/int8-placement-notes.md"),
                   help="Markdown notes to put under the tables.")
    p.add_argument("--render-only", action="store_true", help="Rewrite the Markdown from --out's JSON and --notes.")
    args = p.parse_args(argv)
    from alexnet_deploy.fileio import atomic_write_bytes, atomic_write_json

    if args.render_only:
        import json

        doc = json.loads(args.out.read_text())
        doc["notes"] = args.notes.read_text() if args.notes.is_file() else ""
        atomic_write_json(args.out, doc)
        atomic_write_bytes(args.out.with_suffix(".md"), markdown(doc).encode())
        return 0

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    import os

    import onnxruntime

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    doc = {"machine": f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at the start, "
                      f"onnxruntime {onnxruntime.__version__}",
           "command": "python -m alexnet_deploy.studies.int8_placement " + " ".join(argv or sys.argv[1:]),
           "latency_protocol": {k: v if not isinstance(v, dict) else {str(a): b for a, b in v.items()} for k, v in LATENCY.items()},
           "variants": [study(v, args.work, args.modelopt_python) for v in (args.variant or VARIANTS)]}
    if args.out.is_file():  # keep the variants this run did not redo (each variant is measured in one run)
        import json

        done = {r["variant"] for r in doc["variants"]}
        doc["variants"] = [r for r in json.loads(args.out.read_text()).get("variants", []) if r["variant"] not in done] \
            + doc["variants"]
        doc["variants"].sort(key=lambda r: list(VARIANTS).index(r["variant"]))
    if args.notes and args.notes.is_file():
        doc["notes"] = args.notes.read_text()
    atomic_write_json(args.out, doc)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(doc).encode())
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
