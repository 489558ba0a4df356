"""The report's plots as PNG bytes (matplotlib, Agg backend): latency vs batch per engine, accuracy vs size,
and per-layer calibration sensitivity. Each returns None when there is nothing to draw."""
from __future__ import annotations

import io

from alexnet_deploy.deploy.report_json import first


def _pyplot():
    from alexnet_deploy.deps import require

    mpl = require("matplotlib", "the report's plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def latency_vs_batch(report: dict) -> bytes | None:
    series = {}
    for artifact, result in (report.get("benchmarks") or {}).items():
        for r in (result or {}).get("rows", []):
            if r.get("skipped") or r.get("p50_ms") is None or r.get("mode", "end-to-end") != "end-to-end":
                continue
            series.setdefault(f"{artifact} / {r['engine']}", []).append((r["batch"], r["p50_ms"]))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [p for _, p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title("Latency vs batch, per artifact and engine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def accuracy_vs_size(report: dict) -> bytes | None:
    points: dict[tuple, list[str]] = {}  # rows at the same spot share one marker and one label
    for r in report["rows"]:
        if r.get("size_mb") is not None and r.get("top1_accuracy_pct") is not None:
            spot = (round(r["size_mb"], 1), round(r["top1_accuracy_pct"], 2))
            points.setdefault(spot, []).append(f"{r['artifact']} / {r['engine']}")
    if not points:
        return None
    pts = [(s, a, ", ".join(labels)) for (s, a), labels in points.items()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for size, acc, label in pts:
        ax.scatter([size], [acc], s=40)
        ax.annotate(label, (size, acc), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel("top-1 accuracy, held-out (%)")
    ax.set_title("Accuracy vs size")
    ax.grid(True, alpha=0.3)
    lo = min(a for _, a, _ in pts)
    ax.set_ylim(max(0.0, lo - 2.0), 100.5)
    return _png(fig)


def calibration_sensitivity(report: dict) -> bytes | None:
    rows = ((report.get("calibration") or {}).get("sensitivity")) or []
    rows = [r for r in rows if r.get("layer")]
    if not rows:
        return None
    plt = _pyplot()
    layers = [r["layer"] for r in rows][::-1]
    gain = [first(r, "gain_points", "accuracy_gain_points", default=0.0) for r in rows][::-1]
    err = [first(r, "output_error", "relative_output_error", default=0.0) for r in rows][::-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.2, 0.35 * len(layers) + 1.6), sharey=True)
    a1.barh(layers, gain, color="#4c78a8")
    a1.set_xlabel("accuracy gain (points)")
    a1.set_title("Layer kept in float", fontsize=9)
    a2.barh(layers, err, color="#f58518")
    a2.set_xlabel("relative output error vs FP32")
    a2.set_title("INT8 error with that layer float", fontsize=9)
    for a in (a1, a2):
        a.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Calibration sensitivity per layer", fontsize=10)
    return _png(fig)


PLOTS = {"Latency vs batch": latency_vs_batch, "Accuracy vs size": accuracy_vs_size,
         "Calibration sensitivity per layer": calibration_sensitivity}
