"""report.md and the terminal table: the summary rows as text, the reproduce commands and the machine."""
from __future__ import annotations

HEADERS = ("artifact", "engine", "precision", "status", "size MB", "top-1 acc", "top-1 agree", "max logit err",
           "b1 p50 ms", "b1 p90 ms", "b1 p99 ms", "best img/s", "roofline")


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
            "-" if err is None else (f"{err:.1e}" if err else "0"), num(row.get("batch1_p50_ms"), ".3f"),
            num(row.get("batch1_p90_ms"), ".3f"), num(row.get("batch1_p99_ms"), ".3f"), best,
            num(None if row.get("roofline_fraction") is None else 100 * row["roofline_fraction"], ".1f")
            + ("%" if row.get("roofline_fraction") is not None else "")]


def notes(report: dict) -> list[str]:
    """Why rows were skipped or failed, one line each (the table stays narrow)."""
    out = []
    for r in report["rows"]:
        if r["status"] in ("skipped", "failed", "fail", "interrupted") and r.get("reason"):
            out.append(f"{r['artifact']} / {r['engine']} {r['status']}: {r['reason']}"
                       + (f"; next step: {r['next_step']}" if r.get("next_step") else ""))
    return out


def verdict(report: dict) -> str:
    """The one-line verdict, from the same counts as the header (report.json "counts")."""
    if report.get("state") == "in-progress":
        return "IN PROGRESS: nothing in this folder is vouched for until alexnet-deploy finishes"
    c = report.get("counts") or {}
    gates, errors = (c.get("gates") or {}).get("failed", 0), c.get("errors", 0)
    if report["passed"]:
        return "all parity gates passed"
    parts = [f"{gates} parity gate(s) failed"] if gates else []
    parts += [f"{errors} step(s) failed with an error"] if errors else []
    if report.get("state") in ("interrupted", "failed"):
        parts.append(f"run {report['state']}: {c.get('interrupted', 0)} step(s) not run, their files unchecked")
    return "; ".join(parts) or f"{len(report['failures'])} failure(s)"


def step_counts(report: dict) -> str:
    c = report.get("counts") or {}
    st, g = c.get("steps") or {}, c.get("gates") or {}
    line = (f"steps: {st.get('ran', 0)} ran, {st.get('reused', 0)} reused, {st.get('skipped', 0)} skipped, "
            f"{st.get('failed', 0)} failed with an error")
    if st.get("interrupted"):
        line += f", {st['interrupted']} not run (interrupted)"
    return line + f"; parity gates: {g.get('passed', 0)} passed, {g.get('failed', 0)} failed"


def build_info(report: dict) -> str:
    a = report.get("alexnet_deploy") or {}
    commit = a.get("git_commit")
    return (f"alexnet-deploy {a.get('version')}" + (f" (git {commit[:12]}{', local changes' if a.get('git_dirty') else ''})"
                                                   if commit else " (no git checkout)"))


def load_line(m: dict) -> str:
    def fmt(v):
        return " / ".join(f"{x:.2f}" for x in v) if v else "unknown"

    return f"load average (1/5/15 min): {fmt(m.get('load_average_start'))} at the start, {fmt(m.get('load_average'))} at the end"


def calibration_lines(report: dict) -> list[str]:
    """The INT8 calibration chosen, with calibrate's figures named for what they are (its cosine is the mean
    over images; parity's gate uses the minimum per image)."""
    cal = report.get("calibration") or {}
    ch = cal.get("chosen") or {}
    if not ch:
        return []
    def pct(v):
        return "-" if v is None else f"{v:.2f}%"
    out = [f"- chosen: {ch.get('method')}, FP32 {pct(ch.get('fp32_accuracy_pct'))}, INT8 {pct(ch.get('int8_accuracy_pct'))}, "
           f"drop {ch.get('drop_pct', 0):+.2f} points, top-1 agreement {100 * (ch.get('top1_agreement') or 0):.2f}%, "
           f"mean cosine over images {ch.get('logit_cosine', float('nan')):.4f}, max logit error "
           f"{ch.get('logit_max_abs_error', float('nan')):.3g}, kept in float: {', '.join(ch.get('kept_float') or []) or '-'}"]
    for r in (cal.get("sensitivity") or [])[:5]:
        out.append(f"- {r.get('layer')} in float: {r.get('gain_points', 0):+.2f} points (drop "
                   f"{r.get('drop_with_layer_float', 0):+.2f}), top-1 agreement {100 * (r.get('top1_agreement') or 0):.2f}%")
    return out


def in_progress_markdown(report: dict) -> str:
    return "\n".join(["# alexnet-deploy report: in progress", "", f"**{verdict(report)}.**", "",
                      *[f"- {f}" for f in report.get("failures", [])], "",
                      f"Command (run from this folder): `{report.get('command')}`", "", build_info(report), ""])


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
    if report.get("state") == "in-progress":
        return in_progress_markdown(report)
    m = report.get("machine") or {}
    inp = report["inputs"]
    parts = [f"# alexnet-deploy report\n\n`{inp['weights']}` (sha256 `{inp['weights_sha256'][:12]}`), dataset "
             f"`{inp['dataset']}`: {verdict(report)}. Created {report['created_utc']} in {report['seconds']:.1f} s "
             f"by {build_info(report)}.\n\n{step_counts(report)}.\n",
             markdown_table(report), ""]
    if notes(report):
        parts += ["Notes:\n", *[f"- {n}" for n in notes(report)], ""]
    if report.get("state") in ("interrupted", "failed"):
        parts += [f"**This run did not finish ({report['state']}).** Steps marked not run may have left files of an "
                  "earlier run in this folder; they are not checked. Run the command again to finish.", ""]
    parts += ["Accuracy and agreement are on the held-out split against the PyTorch FP32 checkpoint; max logit "
              "error is the largest |candidate - reference| there; the parity gate's cosine is the minimum over "
              "images (min cosine per image), calibrate's is the mean over images; b1 p50/p90/p99: batch-1 latency "
              "percentiles; roofline is the best row's fraction of the "
              "attainable rate on this machine's measured ceilings (CPU engines; above 100 % when the weights "
              "stay in cache).", ""]
    if calibration_lines(report):
        parts += ["## INT8 calibration", "", *calibration_lines(report), ""]
    parts += ["## Reproduce each artifact alone", "",
              f"Run from {report.get('commands_run_from') or 'the deployment folder'}.", ""]
    for name, cmd in report["commands"].items():
        parts.append(f"- {name}: `{cmd}`")
    parts += ["", "## Machine", "", f"- CPU: {m.get('cpu')} ({m.get('cores')} cores)",
              f"- GPU: {m.get('gpu') or 'none'}" + (f" (driver {m['driver']}, compute capability "
                                                    f"{m.get('compute_capability')})" if m.get("gpu") else ""),
              f"- platform: {m.get('platform')}",
              f"- {load_line(m)}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
              f"- {build_info(report)}", ""]
    return "\n".join(parts)
