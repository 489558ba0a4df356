"""Shared fixtures. Markers: gpu (needs CUDA), trt (needs a TensorRT/TensorRT-RTX builder), slow."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# A run started in the background (`cmd &` without job control, nohup, some CI runners) begins with SIGINT and/or
# SIGHUP ignored, and child processes inherit an ignored disposition. The signal tests send real signals to real
# subprocesses and expect what a terminal gives them, so restore the ordinary dispositions here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for _sig in (signal.SIGHUP, signal.SIGTERM):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.SIG_DFL)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _has_trt_builder() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))


def pytest_collection_modifyitems(config, items):
    skips = {
        "gpu": (None if _has_cuda() else "needs a CUDA GPU (none on this machine)"),
        "trt": (None if _has_trt_builder() else "needs tensorrt or tensorrt-rtx (pip install tensorrt-rtx)"),
    }
    for item in items:
        for marker, reason in skips.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def digits_checkpoint(session_dir) -> Path:
    """cifar10 trained on digits with the CLI's defaults (also the training acceptance test's subject).

    ALEXNET_DEPLOY_TEST_CACHE=DIR (a developer's loop, never CI): reuse the checkpoint a previous pytest run
    trained into DIR, keyed by the sources that make it (training, models, data), instead of 30 s of training."""
    import hashlib

    cache = os.environ.get("ALEXNET_DEPLOY_TEST_CACHE")
    key = None
    if cache:
        pkg = Path(__file__).resolve().parents[1] / "alexnet_deploy"
        h = hashlib.sha256()
        for f in sorted([*pkg.glob("training/*.py"), *pkg.glob("models/*.py"), *pkg.glob("data/*.py")]):
            h.update(f.name.encode() + f.read_bytes())
        key = Path(cache) / h.hexdigest()[:16]
        if (key / "digits.pt").is_file() and (key / "train_seconds.txt").is_file():
            for name in ("digits.pt", "train_seconds.txt"):
                shutil.copy(key / name, session_dir / name)
            return session_dir / "digits.pt"
    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.training.train import TrainConfig, train

    train_set, held = load_digits("train"), load_digits("heldout")
    loaded = load_model("cifar10", "random", num_classes=10, class_names=train_set.class_names)
    result = train(loaded, train_set, held, TrainConfig(epochs=30, lr=0.02), session_dir / "digits.pt", progress=False)
    (session_dir / "train_seconds.txt").write_text(f"{result.seconds:.2f} {result.heldout_accuracy!r}")
    if key is not None:
        tmp = key.with_name(key.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in ("digits.pt", "train_seconds.txt"):
            shutil.copy(session_dir / name, tmp / name)
        try:
            tmp.rename(key)
        except OSError:  # another run cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    return session_dir / "digits.pt"


@pytest.fixture(scope="session")
def digits_onnx(session_dir, digits_checkpoint) -> Path:
    from alexnet_deploy.exporter.onnx_export import export_onnx
    from alexnet_deploy.models.weights import load_model

    return export_onnx(load_model(None, str(digits_checkpoint)), session_dir / "digits.onnx").path


@pytest.fixture(scope="session")
def digits_fp16_onnx(session_dir, digits_checkpoint) -> Path:
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    return export_onnx(load_model(None, str(digits_checkpoint)), session_dir / "digits-fp16.onnx",
                       ExportOptions(fp16=True)).path


@pytest.fixture
def cli(tmp_path):
    """Run a console script's click command in-process; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    def run(command, *args):
        runner = CliRunner()
        result = runner.invoke(command, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """Real photographs shipped with scikit-image, written as files."""
    from PIL import Image
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        p = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(p)
        out[name] = p
    cam = tmp_path / "camera.png"
    Image.fromarray(data.camera()).save(cam)  # grayscale
    out["camera"] = cam
    return out


def no_files_like(folder: Path, pattern: str) -> bool:
    return not list(folder.glob(pattern))


def copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


@pytest.fixture(scope="session")
def small_onnx(session_dir) -> Path:
    """A random cifar10 model with digit class names (so digits are its labelled data), no parity check."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    loaded = load_model("cifar10", "random", class_names=[str(i) for i in range(10)])
    return export_onnx(loaded, session_dir / "small.onnx", ExportOptions(check=False, simplify=False)).path


@pytest.fixture(scope="session")
def faces(session_dir) -> Path:
    """ImageFolder with train/{face,nonface} and a val/ that holds only nonface/."""
    import numpy as np
    from PIL import Image

    from helpers import FACES

    rng = np.random.default_rng(0)
    root = session_dir / "faces"
    for split, classes in (("train", FACES), ("val", ["nonface"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def face_onnx(session_dir) -> Path:
    """A 2-class face model whose metadata records no training dataset."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    from helpers import FACES

    loaded = load_model("cifar10", "random", num_classes=2, class_names=FACES)
    return export_onnx(loaded, session_dir / "face.onnx", ExportOptions(check=False, simplify=False)).path
