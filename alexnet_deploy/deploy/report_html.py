"""report.html: one self-contained page (inline CSS, plots as base64 PNG data URIs, no script, no external
link, image or font), readable offline and attachable to a CI run."""
from __future__ import annotations

import base64
import html

from alexnet_deploy.deploy.report_md import (HEADERS, build_info, calibration_lines, cells, load_line, notes,
                                             step_counts, verdict)
from alexnet_deploy.errors import MissingDependencyError

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#1d2329;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.sub{color:#57606a;margin:0 0 14px}.verdict{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600}
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:5px 8px;border-bottom:1px solid #eaeef2;
text-align:right;white-space:nowrap}th{background:#f6f8fa;font-weight:600}
td:nth-child(-n+4),th:nth-child(-n+4){text-align:left}
.s-pass{color:#116329;font-weight:600}.s-fail,.s-failed{color:#a40e26;font-weight:700}
.s-skipped{color:#8c6d1f}.s-reference,.s-written{color:#0550ae}
.plots{display:flex;flex-wrap:wrap;gap:14px}.plots figure{margin:0;flex:1 1 520px;max-width:600px}
.plots img{width:100%;border:1px solid #eaeef2;border-radius:6px}figcaption{font-size:12px;color:#57606a}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:6px 8px;border-radius:6px;white-space:pre-wrap;word-break:break-all;margin:2px 0 10px}
ul.notes li{color:#57606a}dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px}dt{font-weight:600}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _plots(report: dict) -> tuple[list[str], str | None]:
    from alexnet_deploy.deploy.plots import PLOTS

    figures = []
    try:
        for title, fn in PLOTS.items():
            png = fn(report)
            if png is None:
                continue
            data = base64.b64encode(png).decode("ascii")
            figures.append(f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{_e(title)}</figcaption></figure>")
    except MissingDependencyError as exc:
        return [], str(exc)
    return figures, None


def summary_table(report: dict) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in HEADERS)
    body = []
    for r in report["rows"]:
        tds = []
        for i, c in enumerate(cells(r)):
            cls = f' class="s-{_e(r["status"])}"' if i == 3 else ""
            title = f' title="{_e(r["reason"])}"' if i == 3 and r.get("reason") else ""
            tds.append(f"<td{cls}{title}>{_e(c)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_in_progress(report: dict) -> str:
    items = "".join(f"<li>{_e(f)}</li>" for f in report.get("failures", []))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>alexnet-deploy report: in progress</title>",
        f"<style>{CSS}</style></head><body>", "<h1>alexnet-deploy report (in progress)</h1>",
        f'<p><span class="verdict bad">{_e(verdict(report))}</span></p>', f"<ul>{items}</ul>",
        f"<p>Command (run from this folder):</p><pre>{_e(report.get('command'))}</pre>",
        f'<p class="sub">{_e(build_info(report))}</p>', "</body></html>", ""])


def render(report: dict) -> str:
    if report.get("state") == "in-progress":
        return render_in_progress(report)
    inp, m = report["inputs"], report.get("machine") or {}
    ok = report["passed"]
    figures, plot_error = _plots(report)
    steps = report.get("steps") or []
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>alexnet-deploy report: {_e(inp['weights'].rsplit('/', 1)[-1])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>alexnet-deploy report</h1>",
        f'<p class="sub"><code>{_e(inp["weights"])}</code> (sha256 <code>{_e(inp["weights_sha256"][:12])}</code>), '
        f"dataset <code>{_e(inp['dataset'])}</code> &middot; {_e(report['created_utc'])} &middot; "
        f"{report['seconds']:.1f} s &middot; {_e(step_counts(report))} &middot; {_e(build_info(report))}</p>",
        f'<p><span class="verdict {"ok" if ok else "bad"}">{_e(verdict(report))}</span></p>',
        "<h2>Summary</h2>", summary_table(report),
    ]
    if report.get("state") in ("interrupted", "failed"):
        parts.append(f"<p><b>This run did not finish ({_e(report['state'])}).</b> Steps marked not run may have left "
                     "files of an earlier run in this folder; they are not checked. Run the command again to finish.</p>")
    if notes(report):
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes(report)) + "</ul>")
    parts.append("<p class=\"sub\">Accuracy and agreement: held-out split vs the PyTorch FP32 checkpoint. Max logit "
                 "error: largest |candidate &minus; reference| there. The parity gate's cosine is the minimum over "
                 "images (min cosine per image); calibrate's is the mean over images. b1 p50/p90/p99: batch-1 "
                 "latency percentiles. Roofline: the "
                 "best row's fraction of the attainable rate on this machine's measured ceilings (CPU engines; "
                 "above 100 % when the weights stay in cache).</p>")
    parts.append("<h2>Plots</h2>")
    if figures:
        parts.append('<div class="plots">' + "".join(figures) + "</div>")
    else:
        parts.append(f"<p>{_e(plot_error or 'nothing measured to plot')}</p>")
    if calibration_lines(report):
        parts.append("<h2>INT8 calibration</h2><ul>" + "".join(f"<li>{_e(x[2:])}</li>" for x in calibration_lines(report))
                     + "</ul>")
    parts.append("<h2>Reproduce each artifact alone</h2>")
    parts.append(f"<p>Run from {_e(report.get('commands_run_from') or 'the deployment folder')}.</p>")
    for name, cmd in report["commands"].items():
        parts.append(f"<div><b>{_e(name)}</b><pre>{_e(cmd)}</pre></div>")
    parts.append("<h2>Machine</h2><dl>")
    gpu = m.get("gpu") or "none"
    if m.get("gpu"):
        gpu += f" (driver {m.get('driver')}, compute capability {m.get('compute_capability')})"
    items = [("CPU", f"{m.get('cpu')} ({m.get('cores')} cores)"), ("GPU", gpu), ("platform", m.get("platform")),
             ("load", load_line(m).split(": ", 1)[1]), ("alexnet-deploy", build_info(report).split(" ", 1)[1]),
             *[(k, v) for k, v in (m.get("versions") or {}).items()]]
    ceil = m.get("roofline_ceilings") or {}
    items += [(k, f"{v:.1f}") for k, v in ceil.items() if isinstance(v, (int, float))]
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items]
    parts.append("</dl><h2>Steps</h2><table><thead><tr><th>step</th><th>status</th><th>seconds</th><th>cache key</th>"
                 "<th>note</th></tr></thead><tbody>")
    for s in steps:
        parts.append(f"<tr><td>{_e(s['name'])}</td><td>{_e(s['status'])}</td><td>{s['seconds']:.1f}</td>"
                     f"<td><code>{_e((s.get('cache_key') or '-')[:12])}</code></td><td>{_e(s.get('reason') or '')}</td></tr>")
    parts.append("</tbody></table></body></html>\n")
    return "\n".join(parts)
