"""report.md and the terminal table: the summary rows as text, the reproduce commands and the machine."""
from __future__ import annotations

HEADERS = ("artifact", "engine", "precision", "status", "size MB", "top-1 acc", "top-1 agree", "max logit err",
           "b1 p50 ms", "best img/s", "roofline")


def cells(row: dict) -> list[str]:
    """One summary row as display strings ("-" where a figure does not apply or was not measured)."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    best = "-" if row.get("best_ips") is None else f"{row['best_ips']:.0f} (b{row.get('best_ips_batch')})"
    err = row.get("max_logit_error")
    return [row["artifact"], row["engine"], row.get("precision") or "-", row["status"].upper() if row["status"] in
            ("pass", "fail") else row["status"], num(row.get("size_mb"), ".2f"),
            num(row.get("top1_accuracy_pct"), ".2f") + ("%" if row.get("top1_accuracy_pct") is not None else ""),
            num(None if row.get("top1_agreement") is None else 100 * row["top1_agreement"], ".2f")
            + ("%" if row.get("top1_agreement") is not None else ""),
            "-" if err is None else (f"{err:.1e}" if err else "0"), num(row.get("batch1_p50_ms"), ".3f"), best,
            num(None if row.get("roofline_fraction") is None else 100 * row["roofline_fraction"], ".1f")
            + ("%" if row.get("roofline_fraction") is not None else "")]


def notes(report: dict) -> list[str]:
    """Why rows were skipped or failed, one line each (the table stays narrow)."""
    out = []
    for r in report["rows"]:
        if r["status"] in ("skipped", "failed", "fail") and r.get("reason"):
            out.append(f"{r['artifact']} / {r['engine']} {r['status']}: {r['reason']}")
    return out


def text_table(report: dict) -> str:
    rows = [cells(r) for r in report["rows"]]
    widths = [max(len(x[i]) for x in [list(HEADERS), *rows]) for i in range(len(HEADERS))]

    def line(r):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(HEADERS), line(["-" * w for w in widths]), *map(line, rows)]
    return "\n".join(out + [f"  {n}" for n in notes(report)])


def markdown_table(report: dict) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADERS))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in report["rows"]]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    m = report.get("machine") or {}
    inp = report["inputs"]
    verdict = "all parity gates passed" if report["passed"] else f"{len(report['failures'])} row(s) failed"
    parts = [f"# alexnet-deploy report\n\n`{inp['weights']}` (sha256 `{inp['weights_sha256'][:12]}`), dataset "
             f"`{inp['dataset']}`: {verdict}. Created {report['created_utc']} in {report['seconds']:.1f} s.\n",
             markdown_table(report), ""]
    if notes(report):
        parts += ["Notes:\n", *[f"- {n}" for n in notes(report)], ""]
    parts += ["Accuracy and agreement are on the held-out split against the PyTorch FP32 checkpoint; max logit "
              "error is the largest |candidate - reference| there; roofline is the best row's fraction of the "
              "attainable rate on this machine's measured ceilings (CPU engines; above 100 % when the weights "
              "stay in cache).", "",
              "## Reproduce each artifact alone", ""]
    for name, cmd in report["commands"].items():
        parts.append(f"- {name}: `{cmd}`")
    parts += ["", "## Machine", "", f"- CPU: {m.get('cpu')} ({m.get('cores')} cores)",
              f"- GPU: {m.get('gpu') or 'none'}" + (f" (driver {m['driver']}, compute capability "
                                                    f"{m.get('compute_capability')})" if m.get("gpu") else ""),
              f"- platform: {m.get('platform')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()), ""]
    return "\n".join(parts)
