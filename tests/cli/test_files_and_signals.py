"""Every command: outputs never overwrite inputs, signals leave no temporaries and no created folders,
non-UTF-8 paths run and print valid JSON."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.cli import calibrate_main, export_main, parity_main, predict_main
from alexnet_deploy.errors import DatasetError, ModelLoadError, UserInputError
from alexnet_deploy.fileio import refuse_overlapping_paths
from helpers import FACES, foreign_onnx as _foreign_onnx, one_line as _one_line, png_header_only as _png_header_only


@pytest.mark.parametrize("case", ["parity-json-is-candidate", "parity-junit-is-json", "export-json-is-output",
                                  "export-output-is-weights", "calibrate-json-is-model"])
def test_report_paths_that_are_inputs_are_refused_before_work(cli, small_onnx, tmp_path, case):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_onnx.read_bytes())
    (tmp_path / "alias.onnx").symlink_to(model)
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    cmd, args = {
        "parity-json-is-candidate": (parity_main, [model, "--json", tmp_path / "alias.onnx"]),
        "parity-junit-is-json": (parity_main, [model, "--json", tmp_path / "r.xml", "--junit", tmp_path / "r.xml"]),
        "export-json-is-output": (export_main, ["onnx", "--variant", "cifar10", "-o", tmp_path / "e.onnx",
                                                "--json", tmp_path / "e.onnx"]),
        "export-output-is-weights": (export_main, ["onnx", "--weights", ckpt, "-o", ckpt]),
        "calibrate-json-is-model": (calibrate_main, [model, "-o", tmp_path / "q.onnx", "--json",
                                                     tmp_path / "alias.onnx"]),
    }[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code, out, err = cli(cmd, *args)
    assert code == 2 and "same file" in err and _one_line(err), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


_SLOW_EXPORT = """
import sys, time
import alexnet_deploy.exporter.onnx_export as ox
def slow(onnx_path, *a, **k):  # the temporary ONNX exists now: wait here for the signal
    print("READY", onnx_path, flush=True)
    time.sleep(120)
ox.parity_check = slow
from alexnet_deploy.cli import export_main
export_main(["onnx", "--variant", "cifar10", "--no-simplify", "-o", sys.argv[1]])
"""

_SLOW_CALIBRATE = """
import contextlib, sys, time
import alexnet_deploy.calibration.run as run
real = run.temp_dir
@contextlib.contextmanager
def slow(parent):  # the calibration temp folder exists now: wait in it for the signal
    with real(parent) as tmp:
        print("READY", tmp, flush=True)
        time.sleep(120)
        yield tmp
run.temp_dir = slow
from alexnet_deploy.cli import calibrate_main
calibrate_main([sys.argv[2], "-o", sys.argv[1], "--num-images", "16", "--eval-images", "16"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, script", [(signal.SIGTERM, _SLOW_EXPORT), (signal.SIGHUP, _SLOW_CALIBRATE)])
def test_sigterm_and_sighup_leave_no_temporaries(tmp_path, small_onnx, sig, script):
    out = tmp_path / "new" / "deeper" / "out.onnx"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(out), str(small_onnx)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("READY"):  # the command's own progress lines come first
            line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read()
        temp = Path(line.split(" ", 1)[1].strip())
        assert temp.exists()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "Traceback" not in err
    assert not temp.exists()
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))  # created folders removed
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ignored_signals_stay_ignored_and_handlers_come_back():
    """Under `nohup` SIGHUP is ignored: a command must not turn it into an interrupt; after a command the
    previous handlers are back."""
    from alexnet_deploy.cli.common import _handle_errors

    seen = {}

    @_handle_errors
    def command():
        seen["hup"], seen["term"] = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)

    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        command()
        assert seen["hup"] == signal.SIG_IGN and seen["term"] not in (signal.SIG_DFL, old_term)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == old_term
    finally:
        signal.signal(signal.SIGHUP, old_hup)


def test_failed_export_removes_the_folders_it_created(cli, tmp_path):
    code, _, err = cli(export_main, "onnx", "--variant", "cifar10", "--no-simplify", "--dataset", "none",
                       "-o", tmp_path / "a" / "b" / "m.onnx", "--tol", "max_abs=-1")
    assert code == 1 and "was not written" in err
    assert list(tmp_path.iterdir()) == []


def test_non_utf8_model_path_runs_and_json_has_no_lone_surrogates(cli, small_onnx, tmp_path):
    folder = os.fsdecode(bytes(tmp_path) + b"/mod\xe8le-\xff")
    os.mkdir(folder)
    model = os.path.join(folder, os.fsdecode(b"r\xe9seau.onnx"))
    with open(model, "wb") as f:
        f.write(small_onnx.read_bytes())
    image = os.path.join(folder, os.fsdecode(b"ph\xf6to.png"))
    Image.new("RGB", (32, 32), (0, 90, 200)).save(image)
    code, out, err = cli(predict_main, model, image, "--json")
    assert code == 0, err
    assert "\\udc" not in out.lower() and "\\\\xe9" in out
    doc = json.loads(out)
    doc_text = json.dumps(doc, ensure_ascii=False)
    doc_text.encode("utf-8")  # valid Unicode all through (a lone surrogate would raise here)
    assert doc["results"][0]["image"].endswith("ph\\xf6to.png")
    code, out, err = cli(predict_main, model, image)
    assert code == 0 and "ph\\xf6to.png:" in out, err
