"""Hardening of the CLI, datasets and provenance (issue 10, items 7-11 and 14-18): outputs never overwrite
inputs, signals leave no temporaries, hostile images and foreign models are one-line errors, datasets and
models agree on their classes, and provenance resolves from anywhere."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.cli import calibrate_main, export_main, parity_main, predict_main
from alexnet_deploy.errors import DatasetError, UserInputError
from alexnet_deploy.fileio import refuse_overlapping_paths

FACES = ["face", "nonface"]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def small_onnx(work) -> Path:
    """A random cifar10 model with digit class names (so digits are its labelled data), no parity check."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    loaded = load_model("cifar10", "random", class_names=[str(i) for i in range(10)])
    return export_onnx(loaded, work / "small.onnx", ExportOptions(check=False, simplify=False)).path


@pytest.fixture(scope="module")
def faces(work) -> Path:
    """ImageFolder with train/{face,nonface} and a val/ that holds only nonface/."""
    rng = np.random.default_rng(0)
    root = work / "faces"
    for split, classes in (("train", FACES), ("val", ["nonface"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def face_onnx(work) -> Path:
    """A 2-class face model whose metadata records no training dataset."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    loaded = load_model("cifar10", "random", num_classes=2, class_names=FACES)
    return export_onnx(loaded, work / "face.onnx", ExportOptions(check=False, simplify=False)).path


def _foreign_onnx(path: Path, four_d: bool) -> Path:
    """No alexnet-deploy metadata; output (N, 3, 32, 32) or (N, 3) instead of (N, 10)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    if four_d:
        node = helper.make_node("Identity", ["input"], ["out"])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])
    else:
        node = helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(helper.make_graph([node], "foreign", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h pixels (a decompression bomb costs nothing to make this way)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------- item 7: outputs never overwrite inputs
def test_refuse_overlapping_paths_resolves_symlinks(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "link.json").symlink_to(model)
    with pytest.raises(UserInputError, match="--json .*link.json is the same file as the model"):
        refuse_overlapping_paths(inputs={"the model": model}, outputs={"--json": tmp_path / "link.json"})
    with pytest.raises(UserInputError, match="are the same file"):
        refuse_overlapping_paths(outputs={"--json": tmp_path / "a.json", "--junit": tmp_path / "sub/../a.json"})
    refuse_overlapping_paths(inputs={"the model": model, "--reference": None},
                             outputs={"--json": tmp_path / "r.json", "--junit": None})


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


# ----------------------------------------------------------------------- item 8: signals leave nothing
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


# ------------------------------------------------------------------ item 9: hostile images in predict
def test_predict_skips_bad_images_and_refuses_bombs(cli, small_onnx, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a_good.png")
    _png_header_only(folder / "b_bomb.png", 12000, 12000)  # 140 KB as a real PNG, 432 MB decoded
    (folder / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    Image.new("RGB", (20, 20)).save(folder / "d_good.png")
    code, out, err = cli(predict_main, small_onnx, folder, "--json")
    assert code == 2 and "Traceback" not in err
    res = json.loads(out)
    assert [Path(r["image"]).name for r in res["results"]] == ["a_good.png", "d_good.png"]
    assert [Path(p).name for p in res["skipped"]] == ["b_bomb.png", "c_corrupt.jpg"]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "144.0 MP, over the limit of 50 MP" in lines[0] and "--max-pixels" in lines[0]
    assert "c_corrupt.jpg" in lines[1] and "2 of 4 images" in lines[2]
    # one image: the bomb is the command's one-line error; a lower limit applies to any image
    code, _, err = cli(predict_main, small_onnx, folder / "b_bomb.png")
    assert code == 2 and "over the limit" in err and _one_line(err)
    _png_header_only(tmp_path / "huge.png", 20000, 20000)  # beyond Pillow's own bomb limit
    code, _, err = cli(predict_main, small_onnx, tmp_path / "huge.png")
    assert code == 2 and "too large" in err and _one_line(err)
    code, _, err = cli(predict_main, small_onnx, folder / "a_good.png", "--max-pixels", "100")
    assert code == 2 and "40x30" in err and "over the limit of 0.0001 MP" in err and _one_line(err)


# ----------------------------------------------------------------------- item 10: foreign models
@pytest.mark.parametrize("four_d, message", [(True, "outputs shape (N, 3, 32, 32), not (N, 10)"),
                                             (False, "outputs 3 classes but variant 'cifar10' has 10")])
def test_foreign_model_outputs_are_refused_when_opened(cli, tmp_path, four_d, message):
    model = _foreign_onnx(tmp_path / "foreign.onnx", four_d)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code, out, err = cli(predict_main, model, tmp_path / "x.png", "--variant", "cifar10")
    assert code == 2 and message in err and _one_line(err), err
    assert out == ""


def test_runner_checks_output_shape_at_inference(small_onnx):
    """A dynamic output dimension is checked on the first result."""
    from alexnet_deploy.errors import InferenceError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    meta = read_onnx_metadata(small_onnx)
    meta.class_names = meta.class_names[:7]
    runner = OrtRunner(small_onnx, meta)
    with pytest.raises(Exception, match="outputs 10 classes but its metadata lists 7"):
        runner.activate()
    runner = OrtRunner(small_onnx, read_onnx_metadata(small_onnx))
    with runner:
        runner.metadata = read_onnx_metadata(small_onnx)
        runner.metadata.class_names = ["a", "b"]
        with pytest.raises(InferenceError, match=r"returned shape \(1, 10\)"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))


# ---------------------------------------------------------------------- item 11: non-UTF-8 paths
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


# ------------------------------------------------------------- items 14-15: datasets meet models by class
def test_image_folder_val_is_labelled_from_train(faces):
    from alexnet_deploy.data.datasets import load_dataset

    held = load_dataset(str(faces), "heldout")
    assert held.class_names == FACES and held.labels.tolist() == [1] * 4
    train = load_dataset(str(faces), "train")
    assert train.class_names == FACES and sorted(set(train.labels.tolist())) == [0, 1]
    assert held.root == train.root == str(faces.resolve())


def test_val_class_missing_from_train_is_an_error(tmp_path):
    from alexnet_deploy.data.datasets import load_dataset

    for split, c in (("train", "a"), ("val", "b")):
        (tmp_path / split / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / c / "x.png")
    with pytest.raises(DatasetError, match="class folders that .*train lacks: b"):
        load_dataset(str(tmp_path), "heldout")


def test_dataset_for_model_defaults_and_mismatches(faces):
    from alexnet_deploy.data.datasets import dataset_for_model, labels_for_model, load_dataset

    digits = [str(i) for i in range(10)]
    assert dataset_for_model(None, digits) == "digits"
    assert dataset_for_model(None, [f"class_{i}" for i in range(10)]) == "digits"  # unnamed classes
    assert dataset_for_model(None, FACES, str(faces)) == str(faces)
    assert dataset_for_model("none", FACES) is None
    with pytest.raises(UserInputError, match="not digits and its metadata records no training dataset; pass --x"):
        dataset_for_model(None, FACES, "folder:train", option="--x")
    with pytest.raises(DatasetError, match="dataset digits has classes the model does not know"):
        dataset_for_model("digits", FACES)
    with pytest.raises(DatasetError, match="which is not here"):
        dataset_for_model(None, FACES, str(faces / "gone"))
    only_nonface = load_dataset(str(faces / "val"), "all")  # a folder holding one of the model's classes
    assert only_nonface.class_names == ["nonface"]
    assert labels_for_model(only_nonface, FACES).tolist() == [1] * 4  # mapped by name


def test_face_model_never_meets_digits_silently(cli, face_onnx, faces, tmp_path):
    code, _, err = cli(parity_main, face_onnx, "--num-images", "8", "--random-samples", "2")
    assert code == 2 and "pass --dataset FOLDER" in err and _one_line(err), err
    code, _, err = cli(parity_main, face_onnx, "--dataset", "digits")
    assert code == 2 and "classes the model does not know" in err and _one_line(err), err
    code, out, err = cli(parity_main, face_onnx, "--dataset", faces, "--random-samples", "2")
    assert code == 0 and "folder:val" in out, err
    code, _, err = cli(calibrate_main, face_onnx, "-o", tmp_path / "q.onnx")
    assert code == 2 and "pass --dataset FOLDER" in err and _one_line(err), err
    code, _, err = cli(export_main, "trt", face_onnx, "-o", tmp_path / "e.plan", "--precision", "int8")
    assert code == 2 and "pass --calib-dataset FOLDER" in err and _one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_training_dataset_is_recorded_and_is_the_default(cli, faces, tmp_path, monkeypatch):
    from alexnet_deploy.cli import train_main
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    monkeypatch.chdir(faces.parent)
    code, out, err = cli(train_main, "--dataset", "faces", "--epochs", "1", "--batch-size", "4", "--no-progress",
                         "-o", tmp_path / "f.pt")
    assert code == 0, err
    assert load_model(None, str(tmp_path / "f.pt")).info["dataset"] == str(faces.resolve())
    code, out, err = cli(export_main, "onnx", "--weights", tmp_path / "f.pt", "-o", tmp_path / "f.onnx",
                         "--no-simplify")
    assert code == 0 and "folder:val" in out, err
    meta = read_onnx_metadata(tmp_path / "f.onnx")
    assert meta.training_dataset == str(faces.resolve()) and meta.class_names == FACES
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(parity_main, tmp_path / "f.onnx", "--random-samples", "2")
    assert code == 0 and "folder:val" in out, err
    # fine-tuning a checkpoint on data with other classes is refused
    code, _, err = cli(train_main, "--weights", tmp_path / "f.pt", "--epochs", "1", "-o", tmp_path / "g.pt")
    assert code == 2 and "classes" in err and _one_line(err), err


# ------------------------------------------------------------------- items 16-17: provenance on disk
def test_reference_weights_resolve_from_anywhere(tmp_path, monkeypatch):
    import shutil

    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model, save_checkpoint
    from alexnet_deploy.parity.api import check_parity

    (tmp_path / "proj" / "models").mkdir(parents=True)
    save_checkpoint(tmp_path / "proj" / "w.pt", load_model("cifar10", "random", seed=3))
    monkeypatch.chdir(tmp_path / "proj")
    export_onnx(load_model(None, "w.pt"), "models/m.onnx", ExportOptions(check=False, simplify=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = check_parity(str(tmp_path / "proj" / "models" / "m.onnx"), dataset=None, random_samples=4)
    assert report.passed
    # moved together (the absolute path is gone): the relative path still finds the weights
    shutil.move(tmp_path / "proj", tmp_path / "moved")
    assert check_parity(str(tmp_path / "moved" / "models" / "m.onnx"), dataset=None, random_samples=4).passed
    # replaced weights are noticed through the sha256
    save_checkpoint(tmp_path / "moved" / "w.pt", load_model("cifar10", "random", seed=4))
    with pytest.raises(Exception, match="changed since export"):
        check_parity(str(tmp_path / "moved" / "models" / "m.onnx"), dataset=None, random_samples=4)


def test_fp16_export_hashes_only_bytes_on_disk(tmp_path):
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.models.weights import load_model, save_checkpoint

    save_checkpoint(tmp_path / "w.pt", load_model("cifar10", "random"))
    meta = export_onnx(load_model(None, str(tmp_path / "w.pt")), tmp_path / "h.onnx",
                       ExportOptions(fp16=True, check=False, simplify=False)).metadata
    on_disk = {sha256_file(p) for p in tmp_path.iterdir()}
    assert meta.source_sha256 in on_disk
    assert meta.fp32_onnx_sha256 == "" or meta.fp32_onnx_sha256 in on_disk
    assert "not saved" in meta.extra["converted_from"]


# ------------------------------------------------------------------------------- item 18: units in names
def test_percentages_are_named_pct_and_fractions_are_fractions(cli, small_onnx, tmp_path):
    code, out, err = cli(parity_main, small_onnx, "--num-images", "20", "--random-samples", "2",
                         "--json", tmp_path / "p.json", "--junit", tmp_path / "p.xml")
    assert code in (0, 1), err
    sets = json.loads((tmp_path / "p.json").read_text())["sets"]
    labelled = next(s for s in sets if s["name"].startswith("digits"))["metrics"]
    assert {"ref_accuracy_pct", "cand_accuracy_pct", "accuracy_delta_pct", "accuracy_drop_pct"} <= set(labelled)
    assert not [k for k in labelled if "accuracy" in k and not k.endswith("_pct")]
    assert 0 <= labelled["top1_agreement"] <= 1 and 0 <= labelled["top5_overlap"] <= 1
    assert "ref_accuracy_pct" in (tmp_path / "p.xml").read_text() and "ref_accuracy_pct" in out
    code, out, err = cli(calibrate_main, small_onnx, "-o", tmp_path / "q.onnx", "--num-images", "16",
                         "--eval-images", "16", "--json", tmp_path / "c.json")
    assert code == 0, err
    row = json.loads((tmp_path / "c.json").read_text())["chosen"]
    assert {"fp32_accuracy_pct", "int8_accuracy_pct", "drop_pct", "top1_agreement"} <= set(row)
    assert row["drop_measure"] == "accuracy" and 0 <= row["top1_agreement"] <= 1
    assert not [k for k in row if "accuracy" in k and not k.endswith("_pct")]
