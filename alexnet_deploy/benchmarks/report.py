"""Benchmark outputs: terminal table, JSON, CSV, Markdown, plot, and the regression comparison."""
from __future__ import annotations

import csv
import io
import json

from alexnet_deploy.benchmarks.stats import regression
from alexnet_deploy.errors import UserInputError

COLUMNS = [("model", "model"), ("engine", "engine"), ("prec", "precision"), ("batch", "batch"), ("mode", "mode"),
           ("p50 ms", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"), ("mean", "mean_ms"),
           ("min", "min_ms"), ("max", "max_ms"), ("img/s", "throughput_ips"), ("x base", "vs_baseline"),
           ("MB w/img", "weight_bytes_per_image"), ("GFLOP/s", "achieved_gflops"), ("roof GFLOP/s", "attainable_gflops"),
           ("% roof", "fraction_of_attainable"), ("bound", "bound"), ("floor ms", "layered_floor_ms"),
           ("% floor", "layered_fraction"), ("note", "note")]


def _cells(row: dict) -> list[str]:
    out = []
    for _, key in COLUMNS:
        v = row.get(key)
        if key == "note":
            notes = []
            if row.get("skipped"):
                notes.append("skipped: " + row["skipped"])
            if row.get("stable") is False:
                notes.append(f"UNSTABLE (window CV {row['window_cv']:.1%})")
            if row.get("compute_ms") is not None:
                notes.append(f"device: H2D {row['h2d_ms']:.3f} + compute {row['compute_ms']:.3f} + D2H {row['d2h_ms']:.3f} ms")
            if row.get("harness_overhead") is not None:
                notes.append(f"harness overhead {row['harness_overhead']:+.1%}")
            if row.get("heldout"):  # openvino-nncf: INT8 vs FP32 on the held-out images
                h = row["heldout"]
                acc = (f", acc {h['int8_accuracy_pct']:.2f} % vs FP32 {h['fp32_accuracy_pct']:.2f} %"
                       if h.get("int8_accuracy_pct") is not None else "")
                notes.append(f"held-out {h['images']}: top-1 agree {h['top1_agreement']:.2%}{acc}")
            if row.get("power"):
                p = row["power"]
                notes.append(f"{p['avg_power_w']:.1f} W, {p['images_per_joule']:.1f} img/J")
            v = "; ".join(notes)
        elif key in ("fraction_of_attainable", "layered_fraction") and v is not None:
            v = f"{100 * v:.1f}"
        elif key == "weight_bytes_per_image" and v is not None:
            v = f"{v / 1e6:.2f}"
        elif key == "vs_baseline" and v is not None:
            v = f"{v:.2f}x"
        elif isinstance(v, float):
            v = f"{v:.3f}" if key.endswith("_ms") else f"{v:.1f}"
        out.append("-" if v is None or v == "" else str(v))
    return out


def table(result: dict) -> str:
    rows = [_cells(r) for r in result["rows"]]
    head = [h for h, _ in COLUMNS]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 5 or i == len(r) - 1 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    m = result["machine"]
    lines = [f"machine: {m.get('cpu')} ({m.get('cores')} cores), threads {m.get('threads') or 'default'}"
             + (f", GPU {m['gpu']} (driver {m.get('driver')})" if m.get("gpu") else "")
             + (f", EMULATED {m.get('machine')} ({m['emulated']}): not the device's speed" if m.get("emulated") else "")
             + ceilings_line(result.get("ceilings")),
             fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]
    single = [r for r in result["rows"] if r.get("batch") == 1 and r.get("p90_ms") is not None]
    if single:
        lines.append("single-stream (batch 1) p90: " + ", ".join(f"{r['engine']}/{r['precision']} {r['p90_ms']:.2f} ms" for r in single))
    offline = {}
    for r in result["rows"]:
        if r.get("throughput_ips"):
            k = (r["model"], r["engine"])
            offline[k] = max(offline.get(k, 0), r["throughput_ips"])
    if offline:
        many = len({m for m, _ in offline}) > 1
        lines.append("offline (best batch) throughput: " + ", ".join(
            f"{e}{' ' + m if many else ''} {v:.0f} img/s" for (m, e), v in offline.items()))
    return "\n".join(lines)


def ceilings_line(c: dict | None) -> str:
    """The measured roofline ceilings in one clause ('' without them)."""
    if not c:
        return ""
    int8 = f", INT8 GEMM {c['int8_gemm_gops']:.0f} GOP/s" if c.get("int8_gemm_gops") else ""
    parts = [f"{k} {c[key]:.1f}" for k, key in (("read", "memory_read_gbs"), ("copy", "memory_copy_gbs")) if c.get(key)]
    return (f"; ceilings: FP32 GEMM {c['fp32_gemm_gflops']:.1f} GFLOP/s{int8}, "
            f"memory {c['memory_bandwidth_gbs']:.1f} GB/s" + (f" ({', '.join(parts)})" if parts else ""))


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    keys = ["key", "model", "engine", "provider", "precision", "batch", "mode", "p50_ms", "p90_ms", "p95_ms",
            "p99_ms", "mean_ms", "min_ms", "max_ms", "throughput_ips", "vs_baseline", "weight_bytes_per_image",
            "intensity_flop_per_byte", "achieved_gflops", "attainable_gflops", "fraction_of_attainable", "bound",
            "layered_floor_ms", "layered_fraction", "layered_memory_share",
            "achieved_weight_gbs", "window_cv", "stable", "skipped"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow(r)
    return buf.getvalue()


def to_markdown(result: dict) -> str:
    head = [h for h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    from alexnet_deploy.deps import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for r in result["rows"]:
        if r.get("p50_ms") is None:
            continue
        series.setdefault(f"{r['model']} {r['engine']} {r['mode']}", []).append(r)
    for label, rows in series.items():
        rows.sort(key=lambda r: r["batch"])
        b = [r["batch"] for r in rows]
        ax1.plot(b, [r["p50_ms"] for r in rows], marker="o", label=label)
        ax2.plot(b, [r["throughput_ips"] for r in rows], marker="o", label=label)
    for ax, title in ((ax1, "p50 latency (ms)"), (ax2, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(result: dict, baseline: dict, max_regression: float) -> list[str]:
    """Rows slower than the baseline beyond ``max_regression`` plus noise (one line each)."""
    if baseline.get("schema") != "alexnet-deploy.bench/1":
        raise UserInputError("--compare file is not an alexnet-bench JSON (schema alexnet-deploy.bench/1)")
    base = {r["key"]: r for r in baseline["rows"] if r.get("p50_ms") is not None}
    failures = []
    for r in result["rows"]:
        b = base.get(r.get("key"))
        if b is None or r.get("p50_ms") is None:
            continue
        regressed, ratio, allowed = regression(r, b, max_regression)
        r["vs_previous"] = ratio
        if regressed:
            failures.append(f"{r['key']}: p50 {r['p50_ms']:.3f} ms vs {b['p50_ms']:.3f} ms "
                            f"({ratio:.2f}x, allowed {allowed:.2f}x)")
    return failures


def parse_percent(text: str) -> float:
    t = text.strip().rstrip("%")
    try:
        v = float(t)
    except ValueError:
        raise UserInputError(f"--max-regression {text!r} is not a percentage like 10%") from None
    return v / 100.0 if text.strip().endswith("%") or v >= 1 else v
