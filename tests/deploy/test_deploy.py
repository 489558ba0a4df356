"""alexnet-deploy end to end on the digits model: folder layout, report.json schema, a self-contained HTML
report, step reuse by content hash (and only dependent steps redone after a changed option), parity failure
exit code, refused outputs and interrupted runs leaving no temporaries."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from alexnet_deploy.deploy.report_json import ROW_FIELDS, SCHEMA, STATUSES
from alexnet_deploy.deploy.report_md import HEADERS
from helpers import FAST, deploy_opts as _opts, statuses as _statuses

pytestmark = pytest.mark.slow  # each test runs or reads a real deployment (10-15 s to build)

HAS_TRT = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, digits_checkpoint):
    """One full run (ONNX FP32/FP16/INT8, engine builds where a TensorRT builder is installed, Triton)."""
    from alexnet_deploy.deploy.run import run_deploy

    out = tmp_path_factory.mktemp("deploy") / "dir"
    opts = _opts(digits_checkpoint, out)
    t0 = time.perf_counter()
    report = run_deploy(opts, echo=lambda *a: None)
    return opts, report, time.perf_counter() - t0


def test_folder_layout_and_provenance(deployed):
    from alexnet_deploy.fileio import sha256_file

    opts, report, _ = deployed
    out = opts.out
    expected = ["onnx-fp32", "onnx-fp16", "onnx-int8", "triton"] + (["trt-fp32", "trt-fp16", "trt-int8"] if HAS_TRT else [])
    for a in expected:
        folder = out / a
        model = "model_repository" if a == "triton" else ("model.plan" if a.startswith("trt") else "model.onnx")
        for name in (model, "manifest.json", "labels.txt", "provenance.json"):
            assert (folder / name).exists(), f"{a}/{name} missing"
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["artifact"] == a and len(prov["cache_key"]) == 64
        assert prov["command"].startswith(("alexnet-export", "alexnet-calibrate"))
        for rel, sha in prov["files"].items():  # provenance is bytes on disk
            assert sha256_file(folder / rel) == sha
        for rel in prov["inputs"]:  # inputs relative to the artifact folder
            assert not os.path.isabs(rel) and (folder / rel).exists()
        assert (folder / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    if HAS_TRT:
        for p in ("fp32", "fp16", "int8"):  # the engine manifest names ONNX files that are there after the swap
            manifest = json.loads((out / f"trt-{p}" / "model.plan.manifest.json").read_text())
            for key in ("source_onnx", "built_onnx"):
                if manifest.get(key):
                    assert ".deploy-staging" not in manifest[key] and Path(manifest[key]).is_file(), manifest[key]
    assert (out / "triton/model_repository/alexnet-int8/config.pbtxt").is_file()
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"], "temporaries left"


def test_report_json_schema(deployed):
    opts, report, _ = deployed
    data = json.loads((opts.out / "report.json").read_text())
    assert data["schema"] == SCHEMA and data["passed"] is True and data["failures"] == []
    for key, kind in (("inputs", dict), ("options", dict), ("rows", list), ("steps", list), ("artifacts", dict),
                      ("commands", dict), ("machine", dict), ("benchmarks", dict), ("parity", dict)):
        assert isinstance(data[key], kind), key
    numeric = ("size_mb", "top1_accuracy_pct", "top1_agreement", "max_logit_error", "batch1_p50_ms", "best_ips",
               "roofline_fraction")
    for row in data["rows"]:
        assert tuple(row) == ROW_FIELDS
        assert row["status"] in STATUSES
        assert all(row[k] is None or isinstance(row[k], (int, float)) for k in numeric)
    rows = {(r["artifact"], r["engine"]): r for r in data["rows"]}
    assert rows[("pytorch", "torch")]["status"] == "reference"
    for p in ("fp32", "fp16", "int8"):
        r = rows[(f"onnx-{p}", "ort")]
        assert r["status"] == "pass" and r["precision"] == p
        assert r["top1_agreement"] >= 0.9 and r["top1_accuracy_pct"] > 80 and r["size_mb"] > 0
        assert r["batch1_p50_ms"] > 0 and r["best_ips"] > 0 and r["best_ips_batch"] in (1, 4)
    assert rows[("onnx-int8", "ort")]["size_mb"] < rows[("onnx-fp32", "ort")]["size_mb"] / 3
    assert rows[("onnx-fp32", "ort")]["max_logit_error"] < 1e-3
    for p in ("fp32", "fp16", "int8"):
        r = rows[(f"trt-{p}", "trt")]
        assert r["status"] == "skipped" and r["reason"]  # built (or not installed) but not runnable without a GPU
        if HAS_TRT:
            assert r["size_mb"] > 0 and "GPU" in r["reason"]
        else:
            assert "pip install" in r["reason"]
    assert rows[("triton", "triton")]["status"] == "written"
    assert data["commands"]["calibrate int8"].startswith("alexnet-calibrate ")
    assert "--precision int8" in data["commands"].get("trt int8", "--precision int8")
    assert data["calibration"]["sensitivity"], "per-layer sensitivity rows for the plot"
    assert data["machine"]["cpu"] and data["machine"]["versions"]


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.in_summary = False
        self.headers: list[str] = []
        self.rows = 0
        self._th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and a.get("id") == "summary":
            self.in_summary = True
        elif tag == "table":
            self.in_summary = False
        if self.in_summary and tag == "th":
            self._th = True
        if self.in_summary and tag == "tr":
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "th":
            self._th = False
        if tag == "table":
            self.in_summary = False

    def handle_data(self, data):
        if self._th:
            self.headers.append(data)


def test_html_is_self_contained_with_table_and_plots(deployed):
    opts, report, _ = deployed
    text = (opts.out / "report.html").read_text()
    p = _Html()
    p.feed(text)
    assert p.headers == list(HEADERS)
    assert p.rows == 1 + len(report["rows"])
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) == 3, "latency vs batch, accuracy vs size, calibration sensitivity"
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    for tag, attrs in p.tags:  # nothing loaded from anywhere else
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "srcset", "data"):
            v = attrs.get(name) or ""
            assert not v.lower().startswith(("http:", "https:", "//", "file:")), (tag, name, v)
    assert "@import" not in text and "url(" not in text
    for cmd in ("alexnet-export onnx", "alexnet-calibrate", "alexnet-parity", "alexnet-bench"):
        assert cmd in text


@pytest.mark.slow
def test_second_run_reuses_everything_and_a_changed_option_redoes_only_dependents(deployed, tmp_path):
    from alexnet_deploy.deploy.run import run_deploy

    opts, first, first_seconds = deployed
    model = opts.out / "onnx-fp32" / "model.onnx"
    inode = model.stat().st_ino
    t0 = time.perf_counter()
    again = run_deploy(opts, echo=lambda *a: None)
    st = _statuses(again)
    assert not [n for n, s in st.items() if s == "ran"], st
    assert all(s in ("reused", "skipped") for s in st.values())
    assert not [n for n, s in st.items() if s == "skipped" and not n.startswith(("parity trt", "bench trt", "trt"))]
    assert model.stat().st_ino == inode, "a reused artifact is not rewritten"
    assert again["rows"] == first["rows"]
    assert time.perf_counter() - t0 < first_seconds

    changed = run_deploy(dataclasses.replace(opts, calib_images=48), echo=lambda *a: None)
    st = _statuses(changed)
    redone = {n for n, s in st.items() if s == "ran"}
    want = {"calibrate int8", "triton", "parity onnx-int8 ort", "bench onnx-int8"} | ({"trt int8"} if HAS_TRT else set())
    assert redone == want, st
    assert model.stat().st_ino == inode


def test_parity_failure_exits_nonzero_with_the_table(cli, digits_checkpoint, tmp_path):
    from alexnet_deploy.cli import deploy_main

    out = tmp_path / "dep"
    code, stdout, stderr = cli(deploy_main, "--weights", digits_checkpoint, "--dataset", "digits", "--out", out,
                               "--precisions", "fp32", "--targets", "onnx", "--engines", "ort", "--batch-sizes", "1",
                               "--bench-iterations", "2", "--bench-warmup-ms", "0", "--no-roofline",
                               "--parity-images", "40", "--tol", "max_abs=1e-12")
    assert code == 1
    assert "onnx-fp32" in stdout and "FAIL" in stdout and "report.html" in stdout
    assert "max_abs" in stderr and "error:" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["rows"][0]["status"] == "fail"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_refuses_overlapping_out_and_bad_options(cli, digits_checkpoint, tmp_path):
    from alexnet_deploy.cli import deploy_main

    code, _, err = cli(deploy_main, "--weights", digits_checkpoint, "--dataset", "digits", "--out",
                       digits_checkpoint.parent)
    assert code == 2 and "contains --weights" in err
    code, _, err = cli(deploy_main, "--weights", digits_checkpoint, "--dataset", "digits", "--out",
                       tmp_path / "x", "--precisions", "fp64")
    assert code == 2 and "fp64" in err and not (tmp_path / "x").exists()
    code, _, err = cli(deploy_main, "--weights", tmp_path / "missing.pt", "--dataset", "digits", "--out", tmp_path / "y")
    assert code == 2 and "not found" in err


def test_interrupted_step_leaves_no_temporaries(digits_checkpoint, tmp_path, monkeypatch):
    from alexnet_deploy.deploy.plan import step_kinds
    from alexnet_deploy.deploy.run import run_deploy

    def interrupted(ctx, step, stage):
        (stage / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(step_kinds()["export"], "run", interrupted)
    out = tmp_path / "dep"
    with pytest.raises(KeyboardInterrupt):
        run_deploy(_opts(digits_checkpoint, out, precisions=("fp32",), targets=("onnx",)), echo=lambda *a: None)
    assert list(out.iterdir()) == []


def test_sigterm_leaves_no_temporaries(digits_checkpoint, tmp_path):
    code = r"""
import sys, time
from alexnet_deploy.deploy import steps
def slow(ctx, step, stage):
    (stage / "model.onnx").write_bytes(b"half")
    print("READY", flush=True)
    time.sleep(60)
steps.STEP_KINDS["export"].run = slow
from alexnet_deploy.cli import deploy_main
deploy_main(sys.argv[1:])
"""
    out = tmp_path / "dep"
    proc = subprocess.Popen([sys.executable, "-c", code, "--weights", str(digits_checkpoint), "--dataset", "digits",
                             "--out", str(out), "--precisions", "fp32", "--targets", "onnx"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "READY" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "READY" in line, proc.stderr.read()
        assert [p for p in out.iterdir() if p.name.startswith(".deploy-staging-")]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []


def test_reproduce_commands_parse_with_the_real_clis(deployed):
    """Every command line in the report names options the stage commands really have."""
    import shlex

    from alexnet_deploy import cli as clis

    _, report, _ = deployed
    scripts = {"alexnet-export": clis.export_main, "alexnet-calibrate": clis.calibrate_main,
               "alexnet-parity": clis.parity_main, "alexnet-bench": clis.bench_main,
               "alexnet-deploy": clis.deploy_main}  # the golden set is written by alexnet-deploy itself
    seen = set()
    for line in report["commands"].values():
        for part in line.split(" && "):
            argv = shlex.split(part)
            cmd = scripts[argv[0]]
            args = argv[1:]
            if hasattr(cmd, "commands"):  # a group: alexnet-export onnx|trt|triton
                cmd, args = cmd.commands[args[0]], args[1:]
            cmd.make_context(argv[0], list(args))  # raises click.UsageError on an unknown option
            seen.add(argv[0])
    assert seen == set(scripts)


def test_a_second_deploy_into_the_same_folder_is_refused(digits_checkpoint, tmp_path):
    from alexnet_deploy.deploy import folder
    from alexnet_deploy.deploy.run import run_deploy
    from alexnet_deploy.errors import UserInputError

    out = folder.prepare(tmp_path / "dep")
    with folder.locked(out):
        with pytest.raises(UserInputError, match="another alexnet-deploy"):
            run_deploy(_opts(digits_checkpoint, out, precisions=("fp32",), targets=("onnx",)), echo=lambda *a: None)
    assert list(out.iterdir()) == []


def test_demo_is_alexnet_deploy_on_the_cached_digits_checkpoint(digits_checkpoint, tmp_path):
    import shutil

    from alexnet_deploy.demo import CHECKPOINT, DEPLOY_FOLDER, run_demo

    shutil.copy(digits_checkpoint, tmp_path / CHECKPOINT)
    lines: list[str] = []
    report = run_demo(tmp_path, echo=lines.append, precisions=("fp32",), targets=("onnx",), engines=("ort",),
                      batch_sizes=(1,), bench_iterations=2, bench_duration_s=None, roofline=False,
                      parity_images=40, random_samples=2)
    assert lines[0].startswith("reusing"), lines[0]  # no training when the checkpoint is there
    assert report["passed"] and (tmp_path / DEPLOY_FOLDER / "report.html").is_file()
    assert [r["status"] for r in report["rows"]] == ["pass"]
