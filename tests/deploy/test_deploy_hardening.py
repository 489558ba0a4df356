"""alexnet-deploy hardening (issue 20, items 6-11): a user's folders in --out are never replaced, an interrupted
or failed rerun never leaves a report that says PASS, library exceptions (disk full, NaN weights, an edited
provenance.json) are one line and a FAILED row, edited check records are redone, reproduce commands work from
a copied folder, and the report's header, next steps, names and machine figures hold together.

One small deployment (ONNX FP32 + INT8, engine ort, digits) is built once; each test works on a copy."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_deploy.deploy.plan import DeployOptions
from helpers import mounted_tmpfs

pytestmark = pytest.mark.slow  # each test works on a copy of a real deployment

FAST = dict(precisions=("fp32", "int8"), targets=("onnx",), engines=("ort",), batch_sizes=(1, 4), bench_iterations=3,
            bench_duration_s=None, bench_warmup_ms=0.0, roofline=False, parity_images=120,
            calib_images=32, golden_images=32)
# the same options as CLI arguments (for the subprocess and CliRunner runs)
ARGS = ["--dataset", "digits", "--precisions", "fp32,int8", "--targets", "onnx", "--engines", "ort", "--batch-sizes",
        "1,4", "--bench-iterations", "3", "--bench-warmup-ms", "0", "--no-roofline", "--parity-images", "120",
        "--calib-images", "32", "--golden-images", "32"]


def _quiet(*_a):
    pass


def _statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["steps"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory, digits_checkpoint):
    """A finished deployment: (weights, folder). Tests copy it """
    from alexnet_deploy.deploy.run import run_deploy

    root = tmp_path_factory.mktemp("base")
    weights = root / "digits.pt"
    shutil.copy(digits_checkpoint, weights)
    out = root / "dep"
    report = run_deploy(DeployOptions(weights=weights, out=out, dataset="digits", **FAST), echo=_quiet)
    assert report["passed"], report["failures"]
    return weights, out


def _copy(base, dest: Path, with_weights: bool = False) -> tuple[Path, Path]:
    """A copy of the base folder at ``dest/dep``; the weights stay where they are (the export step's key holds
    their absolute path, which the exporter writes into the model's metadata) unless ``with_weights``."""
    weights, out = base
    dest.mkdir(parents=True, exist_ok=True)
    if with_weights:
        shutil.copy(weights, dest / weights.name)
        weights = dest / weights.name
    shutil.copytree(out, dest / "dep", symlinks=True)
    return weights, dest / "dep"


def _opts(weights: Path, out: Path, **kw) -> DeployOptions:
    return DeployOptions(weights=weights, out=out, dataset="digits", **{**FAST, **kw})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_pass_claimed(out: Path, finished: bool = False) -> dict | None:
    """report.json (when there is one) does not say passed (nor, unless the run ``finished``, complete);
    report.md / report.html do not say all gates passed."""
    data = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    if data is not None:
        assert data["passed"] is False and (finished or data.get("state") != "complete"), data.get("state")
    for name in ("report.md", "report.html"):
        if (out / name).exists():
            assert "all parity gates passed" not in (out / name).read_text(), name
    return data


# ------------------------------------------------------------------------------------------- item 6
def test_user_folders_and_files_sharing_artifact_names_are_refused(base, cli, tmp_path):
    """A user's onnx-int8/, checks/ and report.html in --out: refused before any work, naming each; untouched."""
    from alexnet_deploy.cli import deploy_main

    weights, _ = base
    out = tmp_path / "mine"
    (out / "onnx-int8").mkdir(parents=True)
    (out / "onnx-int8" / "model.onnx").write_bytes(b"my own model")
    (out / "checks").mkdir()
    (out / "checks" / "notes.json").write_text('{"mine": true}')
    (out / "report.html").write_text("<p>my report</p>")
    before = _snapshot(out)
    code, _, err = cli(deploy_main, "--weights", weights, "--out", out, *ARGS)
    assert code == 2, err
    line = err.strip().splitlines()
    assert len(line) == 1 and "onnx-int8/" in line[0] and "checks/notes.json" in line[0] and "report.html" in line[0]
    assert "--force" in line[0]
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["checks", "onnx-int8", "report.html"]


def test_our_artifact_folder_with_a_user_file_is_refused_and_force_replaces(base, tmp_path):
    from alexnet_deploy.deploy.plan import plan_steps
    from alexnet_deploy.deploy.run import foreign_paths, refuse_foreign, run_deploy
    from alexnet_deploy.errors import UserInputError

    weights, out = _copy(base, tmp_path)
    (out / "onnx-fp32" / "NOTES.txt").write_text("my notes")  # inside a folder alexnet-deploy wrote
    with pytest.raises(UserInputError, match=r"onnx-fp32/NOTES\.txt"):
        run_deploy(_opts(weights, out), echo=_quiet)
    assert (out / "onnx-fp32" / "NOTES.txt").read_text() == "my notes"
    assert json.loads((out / "report.json").read_text())["passed"] is True  # nothing changed: still true
    steps = plan_steps(_opts(weights, out), ("ort",))
    lines = []
    refuse_foreign(out, steps, True, lines.append)  # --force: goes ahead, saying what it replaces
    assert "NOTES.txt" in lines[0] and foreign_paths(out, steps) == ["onnx-fp32/NOTES.txt (not in "
                                                                    "onnx-fp32/provenance.json)"]


def test_cleanup_removes_only_our_check_records(base, tmp_path):
    from alexnet_deploy.deploy.run import _remove_unplanned

    _, out = _copy(base, tmp_path)
    (out / "checks" / "mine.json").write_text('{"schema": "my-own"}')
    (out / "mydata").mkdir()
    (out / "mydata" / "provenance.json").write_text('{"schema": "someone else"}')
    _remove_unplanned(out, {"onnx-fp32", "onnx-int8", "golden"}, {"onnx-fp32.ort.parity.json"}, _quiet)
    assert (out / "checks" / "mine.json").is_file() and (out / "mydata" / "provenance.json").is_file()
    assert not (out / "checks" / "onnx-int8.ort.parity.json").exists()  # ours and no longer planned
    index = json.loads((out / "checks" / "provenance.json").read_text())["files"]
    assert set(index) == {"onnx-fp32.ort.parity.json"}


# ------------------------------------------------------------------------------------------- item 7
_HOOKED = r"""
import os, sys, time
from alexnet_deploy.deploy import run, steps
real_parity, real_golden = run.run_parity, steps.RUNNERS["golden"]
def hold(msg):
    print(msg, flush=True)
    time.sleep(120)
def parity(ctx, step):
    if step.artifact == "onnx-int8" and os.environ.get("HOLD_AT") == "parity-int8":
        hold("READY")
    return real_parity(ctx, step)
def golden(ctx, step, stage):
    if os.environ.get("HOLD_AT") == "golden":
        hold("READY")
    return real_golden(ctx, step, stage)
run.run_parity = parity
steps.RUNNERS["golden"] = golden
from alexnet_deploy.cli import deploy_main
deploy_main(sys.argv[1:])
"""


def _run_until_ready(argv: list[str], hold_at: str, sig: int) -> tuple[int, str, str]:
    env = {**os.environ, "HOLD_AT": hold_at}
    proc = subprocess.Popen([sys.executable, "-c", _HOOKED, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if "READY" in line:
                break
        assert "READY" in "".join(seen), "".join(seen) + proc.stderr.read()
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, "".join(seen) + proc.stdout.read(), proc.stderr.read()


@pytest.mark.slow
def test_sigterm_after_calibrate_leaves_a_report_that_claims_no_pass(base, tmp_path):
    """The issue's case: a rerun with a changed calibration, SIGTERM right after "calibrate int8 done" (before
    the new INT8 model's parity): the new model is in place, so the report must not say PASS and must say which
    steps never ran."""
    weights, out = _copy(base, tmp_path)
    old_int8 = (out / "onnx-int8" / "model.onnx").read_bytes()
    argv = ["--weights", str(weights), "--out", str(out), *ARGS, "--calib-images", "48", "--no-sensitivity"]
    rc, stdout, stderr = _run_until_ready(argv, "parity-int8", signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, stderr
    assert re.search(r"calibrate int8 +done", stdout), stdout
    assert (out / "onnx-int8" / "model.onnx").read_bytes() != old_int8, "the rerun replaced the INT8 model"
    data = _no_pass_claimed(out)
    assert data is not None and data["state"] == "interrupted"
    st = _statuses(data)
    assert st["calibrate int8"] == "ran" and st["parity onnx-int8 ort"] == "interrupted"
    rows = {(r["artifact"], r["engine"]): r for r in data["rows"]}
    assert rows[("onnx-int8", "ort")]["status"] == "interrupted" and "SIGTERM" in rows[("onnx-int8", "ort")]["reason"]
    assert any("SIGTERM" in f for f in data["failures"])
    assert "did not finish" in (out / "report.md").read_text()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporaries left"


def test_kill9_leaves_an_in_progress_report(base, tmp_path):
    """kill -9 cannot be caught: the report was replaced by an in-progress one before the first change."""
    weights, out = _copy(base, tmp_path)
    rc, _, _ = _run_until_ready(["--weights", str(weights), "--out", str(out), *ARGS[:-1], "24"], "golden",
                                signal.SIGKILL)
    assert rc == -signal.SIGKILL
    data = _no_pass_claimed(out)
    assert data is not None and data["state"] == "in-progress" and data["rows"] == []
    assert "killed" in data["failures"][0]
    assert "in progress" in (out / "report.md").read_text() and "in progress" in (out / "report.html").read_text()


@pytest.fixture
def full_disk(tmp_path):
    """A 48 MB tmpfs (root with CAP_SYS_ADMIN), unmounted after the test; the simulated ENOSPC tests run anyway."""
    with mounted_tmpfs(tmp_path / "tmpfs", "size=48m") as mnt:
        yield mnt


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system holding ``folder`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler.bin", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_rerun_fails_in_one_line_with_a_failed_row(base, full_disk, cli):
    """A real full disk (tmpfs): the rerun's calibration cannot write; one line naming the file and the cause,
    exit 2, a FAILED row, nothing half-written, and no report that claims a pass."""
    from alexnet_deploy.cli import deploy_main

    weights, out = _copy(base, full_disk / "d")
    _fill(full_disk, 400_000)  # room for the reports, not for a 2.5 MB INT8 model
    code, stdout, stderr = cli(deploy_main, "--weights", weights, "--out", out, *ARGS, "--no-sensitivity")
    assert code == 2, stdout + stderr
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "calibrate int8" in err[0] and ("No space left" in err[0] or "full" in err[0]), err
    assert "onnx-int8" in err[0] and "Traceback" not in stdout + stderr
    print(err[0])
    data = _no_pass_claimed(out, finished=True)
    if data is not None:  # written when the reports still fit
        assert _statuses(data)["calibrate int8"] == "failed"
        assert [r["status"] for r in data["rows"] if r["artifact"] == "onnx-int8"] == ["failed"]
    assert not (out / "onnx-int8").exists(), "an INT8 model that does not match the options is not kept"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporaries left"


def test_library_exception_is_a_failed_row_naming_the_step_and_cause(base, tmp_path, monkeypatch, cli):
    """What onnxruntime does on a full disk (a truncated -inferred file, then protobuf's DecodeError), simulated:
    one line, exit 2, a FAILED row; the steps that need it are skipped, the others still run."""
    from google.protobuf.message import DecodeError

    from alexnet_deploy.calibration import run as calibration
    from alexnet_deploy.cli import deploy_main

    def broken(*_a, **_k):
        raise DecodeError("Error parsing message with type 'onnx.ModelProto'")

    monkeypatch.setattr(calibration, "calibrate", broken)
    weights, out = _copy(base, tmp_path)
    code, stdout, stderr = cli(deploy_main, "--weights", weights, "--out", out, *ARGS, "--no-sensitivity")
    assert code == 2, stdout + stderr
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "calibrate int8: google.protobuf.message.DecodeError: Error parsing message" in err[0], err
    assert "onnx-int8" in err[0]
    data = json.loads((out / "report.json").read_text())
    assert data["state"] == "complete" and data["passed"] is False and data["counts"]["errors"] == 1
    st = _statuses(data)
    assert st["calibrate int8"] == "failed" and st["parity onnx-int8 ort"] == "skipped"
    assert st["parity onnx-fp32 ort"] == "reused"
    assert "1 step(s) failed with an error" in (out / "report.md").read_text()


def test_enospc_in_a_write_names_the_file(tmp_path, monkeypatch):
    """A write that runs out of space names the file it was writing (the OS error does not)."""
    from alexnet_deploy import fileio
    from alexnet_deploy.errors import AlexnetDeployError, OutputWriteError

    target = tmp_path / "sub" / "model.onnx"

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputWriteError) as info:
        fileio.atomic_write_bytes(target, b"x" * 10)
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert isinstance(info.value, OSError) and isinstance(info.value, AlexnetDeployError)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert list((tmp_path / "sub").iterdir()) == []


# ------------------------------------------------------------------------------------------- item 8
@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, digits_checkpoint):
    import torch

    from alexnet_deploy.models.weights import load_model, save_checkpoint

    loaded = load_model(None, str(digits_checkpoint))
    with torch.no_grad():
        loaded.model.state_dict()["features.3.weight"].view(-1)[:7] = float("nan")
    return save_checkpoint(tmp_path_factory.mktemp("nan") / "nan.pt", loaded)


def test_nan_weights_name_the_tensor_before_exporting(base, nan_checkpoint, cli, tmp_path):
    from alexnet_deploy.cli import deploy_main, export_main

    code, _, err = cli(export_main, "onnx", "--weights", nan_checkpoint, "-o", tmp_path / "x" / "m.onnx")
    assert code == 2 and "features.3.weight" in err and "non-finite" in err, err
    assert "disagrees" not in err and not (tmp_path / "x").exists()
    _, out = _copy(base, tmp_path / "c")
    before = _snapshot(out)
    code, _, err = cli(deploy_main, "--weights", nan_checkpoint, "--out", out, *ARGS)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "features.3.weight" in err, err
    assert _snapshot(out) == before, "the folder is not touched by a checkpoint that cannot deploy"


def test_provenance_files_as_a_list_is_redone_not_a_traceback(base, tmp_path):
    from alexnet_deploy.deploy.run import run_deploy

    weights, out = _copy(base, tmp_path)
    prov = out / "golden" / "provenance.json"
    rec = json.loads(prov.read_text())
    rec["files"] = sorted(rec["files"])  # hand-edited: a list of names
    prov.write_text(json.dumps(rec))
    lines: list[str] = []
    report = run_deploy(_opts(weights, out), echo=lines.append)
    st = _statuses(report)
    assert st["golden"] == "ran" and {s for n, s in st.items() if n != "golden"} == {"reused"}, st
    assert report["passed"] and any('"files" is not a mapping' in x for x in lines)
    assert isinstance(json.loads(prov.read_text())["files"], dict)


# ------------------------------------------------------------------------------------------- item 9
def test_an_edited_check_record_is_redone(base, tmp_path):
    from alexnet_deploy.deploy.run import run_deploy

    weights, out = _copy(base, tmp_path)
    record = out / "checks" / "onnx-int8.ort.parity.json"
    data = json.loads(record.read_text())
    assert data["status"] == "pass"
    data["status"], data["report"]["passed"] = "fail", False
    record.write_text(json.dumps(data, indent=2))
    report = run_deploy(_opts(weights, out), echo=_quiet)
    st = _statuses(report)
    assert st["parity onnx-int8 ort"] == "ran", st
    assert [n for n, s in st.items() if s == "ran"] == ["parity onnx-int8 ort"]
    assert report["passed"] and json.loads(record.read_text())["status"] == "pass"
    from alexnet_deploy.fileio import sha256_file

    index = json.loads((out / "checks" / "provenance.json").read_text())["files"]
    assert index[record.name] == sha256_file(record)
    assert all(r["status"] == "reused" for r in run_deploy(_opts(weights, out), echo=_quiet)["steps"])


# ------------------------------------------------------------------------------------------- item 10
def test_reproduce_commands_are_relative_and_run_from_a_copied_folder(base, tmp_path, monkeypatch, cli):
    """Copied elsewhere (the weights beside it, as on the build host), the folder documents itself: no command
    names the build host's paths, and the export command, run from the copy, rebuilds the same model."""
    import shlex

    from alexnet_deploy.cli import export_main
    from alexnet_deploy.fileio import sha256_file

    weights, orig = base
    report = json.loads((orig / "report.json").read_text())
    texts = list(report["commands"].values())
    for p in orig.glob("*/provenance.json"):
        if p.parent.name != "checks":  # checks/provenance.json: the records' sha256 index
            texts.append(json.loads(p.read_text())["command"])
            assert json.loads(p.read_text())["command_cwd"] == ".."
    texts += [json.loads(p.read_text())["command"] for p in (orig / "checks").glob("*.*.json")]
    for t in texts:
        assert str(orig.parent) not in t and not [a for a in shlex.split(t) if os.path.isabs(a)], t
    assert "cd DIR" in report["commands_run_from"]
    _, copy = _copy(base, tmp_path / "jetson", with_weights=True)
    monkeypatch.chdir(copy)
    argv = shlex.split(report["commands"]["export fp32"])
    assert argv[:2] == ["alexnet-export", "onnx"]
    prov = json.loads((copy / "onnx-fp32" / "provenance.json").read_text())
    import onnx

    before = onnx.load(str(copy / "onnx-fp32" / "model.onnx")).graph.SerializeToString()
    (copy / "onnx-fp32" / "model.onnx").unlink()
    code, out, err = cli(export_main, *argv[1:])
    assert code == 0, out + err
    # the same graph and weights (the metadata also records the weights' absolute path, which differs here)
    assert onnx.load(str(copy / "onnx-fp32" / "model.onnx")).graph.SerializeToString() == before
    assert sha256_file(orig / "onnx-fp32" / "model.onnx") == prov["files"]["model.onnx"]
    parity = shlex.split(report["commands"]["parity onnx-int8 ort"])
    assert Path(parity[1]).is_file() and Path(parity[parity.index("--reference") + 1]).is_file()


# ------------------------------------------------------------------------------------------- item 11
def test_failed_gate_report_counts_next_step_names_and_machine(base, tmp_path, cli):
    from alexnet_deploy.cli import deploy_main

    weights, out = _copy(base, tmp_path)
    code, stdout, stderr = cli(deploy_main, "--weights", weights, "--out", out, *ARGS, "--tol", "min_cosine=0.99999")
    assert code == 1, stdout + stderr  # only a gate failed
    data = json.loads((out / "report.json").read_text())
    fails = [r for r in data["rows"] if r["status"] == "fail"]
    assert [r["artifact"] for r in fails] == ["onnx-int8"]
    c = data["counts"]
    assert c["gates"] == {"passed": 1, "failed": 1} and c["errors"] == 0 and len(data["failures"]) == 1
    assert sum(c["steps"].values()) == len(data["steps"])
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):  # the header's counts and the verdict say the same thing
        assert "parity gates: 1 passed, 1 failed" in text and "1 parity gate(s) failed" in text
        assert "0 failed with an error" in text
    row = fails[0]
    assert "min cosine per image = " in row["reason"] and "cosine = " not in row["reason"].replace("per image = ", "")
    layers = [r["layer"] for r in data["calibration"]["sensitivity"]]
    assert row["next_step"] and any(layer in row["next_step"] for layer in layers[:1]), row["next_step"]
    assert f"alexnet-deploy --weights {os.path.relpath(weights, out)} " in row["next_step"]
    assert ("--max-drop" in row["next_step"]) or ("--calib-method auto" in row["next_step"])
    assert "next step:" in md and "mean cosine over images" in md
    for r in data["rows"]:
        assert r["batch1_p90_ms"] > 0 and r["batch1_p99_ms"] >= r["batch1_p90_ms"] >= r["batch1_p50_ms"] > 0
    m = data["machine"]
    assert len(m["load_average"]) == 3 and len(m["load_average_start"]) == 3
    assert "load average" in md and "b1 p99 ms" in md
    info = data["alexnet_deploy"]
    from alexnet_deploy import __version__

    assert info["version"] == __version__
    if (Path(__file__).resolve().parents[2] / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"] or ""), info
        assert info["git_commit"][:12] in md and info["git_commit"][:12] in html


def test_report_of_a_rerun_after_failure_passes_again(base, tmp_path):
    """The next complete run replaces an interrupted/in-progress report with a true one."""
    from alexnet_deploy.deploy import report_json
    from alexnet_deploy.deploy.run import _write_reports, run_deploy

    weights, out = _copy(base, tmp_path)
    opts = _opts(weights, out)

    class Ctx:
        pass

    ctx = Ctx()
    ctx.opts = dataclasses.replace(opts, weights=weights.resolve())
    _write_reports(out, report_json.in_progress(ctx, [], None))
    assert json.loads((out / "report.json").read_text())["state"] == "in-progress"
    report = run_deploy(opts, echo=_quiet)  # the in-progress report is ours: not refused
    assert report["passed"] and report["state"] == "complete"
    assert "all parity gates passed" in (out / "report.md").read_text()

