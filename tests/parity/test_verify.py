"""The golden set alexnet-deploy writes and alexnet-verify / alexnet-parity --golden reading it on the target:
a fresh folder verifies, a tampered golden file or model fails with one line, bad input is one line (exit 2),
verify runs with torch (and the dataset's scikit-learn) blocked, and reports are written atomically."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from helpers import deploy_opts as _opts, statuses as _statuses

pytestmark = pytest.mark.slow  # the tests verify a real deployment folder built once per module


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits_checkpoint):
    """FP32 + INT8 ONNX (FP32 is built for INT8 anyway), ORT only, a small golden set."""
    from alexnet_deploy.deploy.run import run_deploy

    out = tmp_path_factory.mktemp("verify") / "dep"
    opts = _opts(digits_checkpoint, out, precisions=("fp32", "int8"), targets=("onnx",), engines=("ort",),
                 batch_sizes=(1,), bench_iterations=2, golden_images=120, sensitivity=False)
    report = run_deploy(opts, echo=lambda *a: None)
    assert report["passed"], report["failures"]
    return opts, report


@pytest.fixture
def copy_of(folder, tmp_path):
    def make() -> Path:
        dst = tmp_path / "copy"
        shutil.copytree(folder[0].out, dst)
        return dst
    return make


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_golden_set_layout_and_report(folder):
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.parity.golden import GOLDEN_SCHEMA, load_golden
    from alexnet_deploy.parity.tolerances import TOLERANCES

    opts, report = folder
    g = opts.out / "golden"
    manifest = json.loads((g / "manifest.json").read_text())
    assert manifest["schema"] == GOLDEN_SCHEMA and manifest["images"] == 120
    assert manifest["inputs"]["stored"] == "model-input" and manifest["inputs"]["shape"] == [120, 3, 32, 32]
    for rel, sha in manifest["files"].items():
        assert sha256_file(g / rel) == sha
    gates = json.loads((g / "gates.json").read_text())
    assert set(gates) == set(TOLERANCES) and gates["int8"]["max_accuracy_drop_pct"] == TOLERANCES["int8"].max_accuracy_drop_pct
    golden = load_golden(opts.out)
    assert golden.labels is not None and np.bincount(golden.labels).min() == 12  # class-balanced
    assert report["golden"]["status"] == "written" and report["golden"]["images"] == 120
    assert report["artifacts"]["golden"]["files"]["manifest.json"] == sha256_file(g / "manifest.json")
    isa = report["machine"]["isa"]
    assert isa["int8_kernels"] and "onnxruntime" in report["machine"] and report["machine"]["onnxruntime"]["providers"]


def test_verify_passes_and_writes_json_and_junit(folder, cli, tmp_path):
    from alexnet_deploy.cli import verify_main

    opts, _ = folder
    code, out, err = cli(verify_main, opts.out, "--json", tmp_path / "v.json", "--junit", tmp_path / "v.xml")
    assert code == 0, out + err
    assert "verify: PASS (2 artifact(s)" in out and "machine:" in out
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["schema"] == "alexnet-deploy.verify/1" and data["passed"] is True
    rows = {r["artifact"]: r for r in data["rows"]}
    assert set(rows) == {"onnx-fp32", "onnx-int8"} and all(r["status"] == "pass" for r in rows.values())
    assert rows["onnx-int8"]["precision"] == "int8" and rows["onnx-int8"]["metrics"]["accuracy_drop_pct"] <= 1.0
    assert rows["onnx-fp32"]["metrics"]["max_abs"] < 1e-3
    assert data["machine"]["isa"]["flags"] and data["machine"]["onnxruntime"]["version"]
    suite = ET.parse(tmp_path / "v.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.xml"]  # no temporaries left
    # one artifact, by folder or by model file; an explicit engine
    code, out, _ = cli(verify_main, opts.out / "onnx-int8", "--engine", "ort")
    assert code == 0 and "onnx-int8" in out and "onnx-fp32" not in out
    code, out, _ = cli(verify_main, opts.out / "onnx-fp32" / "model.onnx")
    assert code == 0 and "onnx-fp32" in out
    # a report may not be written into the folder it verifies
    code, _, err = cli(verify_main, opts.out, "--json", opts.out / "golden" / "v.json")
    assert code == 2 and "inside the deployment folder" in _one_line(err)


def test_a_gate_failure_is_a_failing_verify(folder, cli, tmp_path):
    from alexnet_deploy.cli import verify_main

    code, out, err = cli(verify_main, folder[0].out, "--tol", "max_abs=1e-12", "--junit", tmp_path / "j.xml")
    assert code == 1 and "FAIL" in out
    assert "max_abs" in _one_line(err) and "verify FAILED" in err
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "2"


def test_tampered_golden_file_fails_in_one_line(copy_of, cli):
    from alexnet_deploy.cli import verify_main

    dep = copy_of()
    labels = dep / "golden" / "labels.npy"
    data = bytearray(labels.read_bytes())
    data[-8] ^= 1  # one label changed: the arrays still load
    labels.write_bytes(bytes(data))
    code, out, err = cli(verify_main, dep)
    assert code == 1 and "PASS" not in out
    line = _one_line(err)
    assert "labels.npy" in line and "sha256" in line
    (dep / "golden" / "reference_outputs.npy").unlink()
    code, _, err = cli(verify_main, dep)
    assert code == 1 and "missing" in _one_line(err)


def test_tampered_model_fails_and_the_others_still_run(copy_of, cli, tmp_path):
    from alexnet_deploy.cli import verify_main

    dep = copy_of()
    model = dep / "onnx-int8" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")
    code, out, err = cli(verify_main, dep, "--json", tmp_path / "v.json")
    assert code == 1
    line = _one_line(err)
    assert "onnx-int8/model.onnx" in line and "sha256" in line
    rows = {r["artifact"]: r["status"] for r in json.loads((tmp_path / "v.json").read_text())["rows"]}
    assert rows == {"onnx-fp32": "pass", "onnx-int8": "fail"}
    # provenance.json rewritten to match: report.json still records the original sha256
    prov = dep / "onnx-int8" / "provenance.json"
    from alexnet_deploy.fileio import sha256_file

    rec = json.loads(prov.read_text())
    rec["files"]["model.onnx"] = sha256_file(model)
    prov.write_text(json.dumps(rec))
    code, _, err = cli(verify_main, dep / "onnx-int8")
    assert code == 1 and "report.json" in _one_line(err)


def test_bad_input_is_one_line_with_exit_2(folder, copy_of, cli, tmp_path):
    from alexnet_deploy.cli import verify_main

    code, _, err = cli(verify_main, tmp_path / "missing")
    assert code == 2 and "not found" in _one_line(err)
    (tmp_path / "plain").mkdir()
    code, _, err = cli(verify_main, tmp_path / "plain")
    assert code == 2 and "not a deployment folder" in _one_line(err)
    stray = tmp_path / "stray.onnx"
    shutil.copy(folder[0].out / "onnx-fp32" / "model.onnx", stray)
    code, _, err = cli(verify_main, stray)
    assert code == 2 and "alexnet-parity --golden" in _one_line(err)
    dep = copy_of()
    shutil.rmtree(dep / "golden")
    code, _, err = cli(verify_main, dep)
    assert code == 2 and "no golden set" in _one_line(err)
    dep2 = tmp_path / "copy2"
    shutil.copytree(folder[0].out, dep2)
    (dep2 / "golden" / "manifest.json").write_text("{not json")
    code, _, err = cli(verify_main, dep2)
    assert code == 2 and "corrupt" in _one_line(err)


def test_parity_golden_checks_a_model_built_elsewhere(folder, cli, tmp_path):
    from alexnet_deploy.cli import parity_main
    from alexnet_deploy.fileio import sha256_file

    opts, _ = folder
    model = tmp_path / "built-on-device.onnx"
    shutil.copy(opts.out / "onnx-int8" / "model.onnx", model)
    code, out, err = cli(parity_main, model, "--golden", opts.out / "golden", "--json", tmp_path / "p.json")
    assert code == 0, out + err
    assert "parity: PASS" in out and "golden" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["candidate_sha256"] == sha256_file(model) and data["precision"] == "int8"
    assert data["machine"]["isa"]["flags"] and data["golden"]["images"] == 120
    code, _, err = cli(parity_main, model, "--golden", opts.out, "--dataset", "digits")
    assert code == 2 and "--dataset" in _one_line(err)


def test_verify_runs_without_torch_or_the_dataset(folder, tmp_path):
    """The target has alexnet-deploy[runtime] only: block torch, torchvision and scikit-learn (the dataset)."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "sklearn", "onnxsim"):
                    raise ImportError(name + " blocked for this test")
        sys.meta_path.insert(0, Block())
        from alexnet_deploy.cli import verify_main
        try:
            verify_main([{str(folder[0].out)!r}, "--json", {str(tmp_path / "v.json")!r}])
        except SystemExit as exc:
            assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn")]
            sys.exit(exc.code)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: PASS" in proc.stdout
    assert json.loads((tmp_path / "v.json").read_text())["machine"]["versions"].get("torch")  # recorded, not imported


def test_redeploy_reuses_the_golden_set_and_rewrites_a_tampered_one(folder, copy_of, cli):
    from alexnet_deploy.cli import verify_main
    from alexnet_deploy.deploy.run import run_deploy

    opts, _ = folder
    dep = copy_of()
    ref = dep / "golden" / "reference_outputs.npy"
    ref.write_bytes(ref.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    import dataclasses

    again = run_deploy(dataclasses.replace(opts, out=dep), echo=lambda *a: None)
    st = _statuses(again)
    assert st["golden"] == "ran" and st["export fp32"] == "reused" and st["calibrate int8"] == "reused"
    assert again["golden"]["status"] == "written"
    code, out, err = cli(verify_main, dep)
    assert code == 0, out + err
    assert _statuses(run_deploy(dataclasses.replace(opts, out=dep), echo=lambda *a: None))["golden"] == "reused"


def test_pixels_golden_set_feeds_float_and_raw_pixel_models(folder, tmp_path, monkeypatch, digits_checkpoint):
    """The 224/227 form (uint8 pixels, normalized on the target) on the 32x32 model: forced by the size limit."""
    from alexnet_deploy.deploy import golden as writer
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.parity.golden import compare_with_golden, load_golden
    from alexnet_deploy.runtime.runners import open_runner

    assert writer.stored_form(256, 224, "float-nchw") == "pixels"
    assert writer.stored_form(256, 32, "float-nchw") == "model-input"
    assert writer.stored_form(8, 32, "uint8-nhwc") == "pixels"
    loaded = load_model(None, str(digits_checkpoint))
    monkeypatch.setattr(writer, "FLOAT_INPUTS_MAX_BYTES", 0)
    g = tmp_path / "golden"
    g.mkdir()
    summary = writer.write_golden(loaded, "digits", 40, g, echo=lambda *a: None)
    assert summary["stored"] == "pixels"
    golden = load_golden(g)
    assert golden.inputs.dtype == np.uint8 and golden.inputs.shape == (40, 32, 32, 3)
    raw = export_onnx(loaded, tmp_path / "raw.onnx", ExportOptions(input_format="uint8-nhwc", check=False)).path
    for model in (folder[0].out / "onnx-fp32" / "model.onnx", raw):
        with open_runner(model) as r:
            rep = compare_with_golden(r, golden)
        assert rep.passed, rep.table()
    # a golden set holding normalized floats cannot feed a raw-pixel model: a failing, explained set
    with open_runner(raw) as r:
        rep = compare_with_golden(r, load_golden(folder[0].out))
    assert not rep.passed and "uint8-nhwc" in rep.failures[0]


def test_isa_features_name_the_int8_kernels():
    from alexnet_deploy.runtime.machine import isa_features

    def x86(flags):
        return isa_features(f"processor: 0\nflags\t\t: fpu sse4_1 {flags}\n", "x86_64")

    assert x86("avx avx2 fma")["int8_kernels"] == "avx2 (saturating u8s8)"
    assert x86("avx2 avx512f avx512bw")["int8_kernels"] == "avx512bw (saturating u8s8)"
    assert x86("avx2 avx512f avx512bw avx512_vnni")["int8_kernels"] == "avx512-vnni"
    assert x86("avx2 avx_vnni")["int8_kernels"] == "avx-vnni"
    assert x86("avx2 avx512bw avx512_vnni amx_tile amx_int8")["int8_kernels"] == "amx"
    f = x86("avx2")["flags"]
    assert f["avx2"] is True and f["avx512_vnni"] is False and "amx_int8" in f
    arm = isa_features("processor: 0\nFeatures\t: fp asimd evtstrm asimddp asimdhp\n", "aarch64")
    assert arm["int8_kernels"] == "neon-dotprod" and arm["flags"]["asimddp"] and not arm["flags"]["i8mm"]
    assert isa_features("", "x86_64")["source"] == "unavailable"


def test_an_unfinished_deployment_is_named(copy_of, cli, tmp_path):
    """A folder whose report says in-progress / interrupted / failed may mix two runs' artifacts: verify still
    checks each on its own hashes and gates, and says so (it used to pass such a folder without a word)."""
    from alexnet_deploy.cli import verify_main

    d = copy_of()
    report = json.loads((d / "report.json").read_text())
    report["state"] = "interrupted"
    (d / "report.json").write_text(json.dumps(report))
    code, out, err = cli(verify_main, d, "--json", tmp_path / "v.json")
    assert code == 0, out + err
    assert "warning:" in err and "interrupted" in err
    assert json.loads((tmp_path / "v.json").read_text())["warnings"]
