"""The README's main job: cifar10 trained on the embedded digits, then `alexnet-deploy` on it (ONNX FP32 /
FP16 / INT8, TensorRT-RTX engine builds where installed, a Triton repository, parity, short benchmarks)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from alexnet_deploy.errors import ModelLoadError

CHECKPOINT = "cifar10-digits.pt"
DEPLOY_FOLDER = "deploy"
# Short benchmarks keep `make demo` quick on a 2-core CPU; alexnet-deploy's defaults measure longer.
DEMO_BENCH = {"batch_sizes": (1, 32), "bench_duration_s": 0.5, "bench_warmup_ms": 100.0, "calib_images": 256}


def checkpoint(workdir: Path, retrain: bool = False, echo: Callable[[str], None] = print) -> Path:
    """The digits-trained cifar10 checkpoint in ``workdir``, trained (~15 s) unless a usable one is there."""
    from alexnet_deploy.models.weights import load_model

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / CHECKPOINT
    if ckpt.is_file() and not retrain:
        try:
            info = load_model("cifar10", str(ckpt)).info
            echo(f"reusing {ckpt} (held-out accuracy {info.get('heldout_accuracy', float('nan')):.2%}); "
                 "--retrain to train again")
            return ckpt
        except ModelLoadError as exc:
            echo(f"cached checkpoint unusable ({exc}); training again")
    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.training.train import TrainConfig, train

    train_set, held = load_digits("train"), load_digits("heldout")
    echo(f"training cifar10 on scikit-learn digits ({len(train_set)} train / {len(held)} held-out)")
    loaded = load_model("cifar10", "random", num_classes=10, class_names=train_set.class_names)
    res = train(loaded, train_set, held, TrainConfig(epochs=30, lr=0.02), ckpt, progress=True)
    echo(f"held-out accuracy {res.heldout_accuracy:.2%} in {res.seconds:.1f} s -> {ckpt}")
    return ckpt


def run_demo(workdir: Path, retrain: bool = False, echo: Callable[[str], None] = print, **overrides) -> dict:
    """Train (or reuse) the checkpoint, then deploy it into ``workdir/deploy``; returns report.json's dict."""
    from alexnet_deploy.deploy.plan import DeployOptions
    from alexnet_deploy.deploy.run import run_deploy

    t0 = time.perf_counter()
    ckpt = checkpoint(workdir, retrain, echo)
    opts = DeployOptions(weights=ckpt, out=workdir / DEPLOY_FOLDER, dataset="digits", **{**DEMO_BENCH, **overrides})
    report = run_deploy(opts, echo=echo)
    report["demo_seconds"] = round(time.perf_counter() - t0, 1)
    return report
