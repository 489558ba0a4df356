"""The README's main job: cifar10 on the embedded digits -> checkpoint -> FP32, FP16 and INT8 ONNX -> parity."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from alexnet_deploy.errors import ModelLoadError

CHECKPOINT = "cifar10-digits.pt"


def run_demo(workdir: Path, retrain: bool = False, echo: Callable[[str], None] = print) -> dict:
    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.training.train import TrainConfig, train

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / CHECKPOINT
    t0 = time.perf_counter()
    loaded = None
    if ckpt.is_file() and not retrain:
        try:
            loaded = load_model("cifar10", str(ckpt))
            echo(f"[1/4] reusing {ckpt} (held-out accuracy {loaded.info.get('heldout_accuracy', float('nan')):.2%}); "
                 "--retrain to train again")
        except ModelLoadError as exc:
            echo(f"[1/4] cached checkpoint unusable ({exc}); training again")
    if loaded is None:
        train_set, held = load_digits("train"), load_digits("heldout")
        echo(f"[1/4] training cifar10 on scikit-learn digits ({len(train_set)} train / {len(held)} held-out)")
        loaded = load_model("cifar10", "random", num_classes=10, class_names=train_set.class_names)
        res = train(loaded, train_set, held, TrainConfig(epochs=30, lr=0.02), ckpt, progress=True)
        loaded = load_model("cifar10", str(ckpt))
        echo(f"      held-out accuracy {res.heldout_accuracy:.2%} in {res.seconds:.1f} s -> {ckpt}")
    summary = {"checkpoint": str(ckpt), "heldout_accuracy": loaded.info.get("heldout_accuracy")}
    for step, fp16 in ((2, False), (3, True)):
        out = workdir / ("cifar10-digits-fp16.onnx" if fp16 else "cifar10-digits.onnx")
        echo(f"[{step}/4] exporting {'FP16' if fp16 else 'FP32'} ONNX -> {out}")
        result = export_onnx(loaded, out, ExportOptions(fp16=fp16, dataset_samples=360))
        echo(result.report.table())
        summary[result.metadata.precision] = _row(out, result.report)
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.parity.api import check_parity

    int8 = workdir / "cifar10-digits-int8.onnx"
    echo(f"[4/4] INT8 QDQ calibration on 512 training digits -> {int8}")
    calibrate(workdir / "cifar10-digits.onnx", int8, num_images=512, echo=echo)
    report = check_parity(int8)
    echo(report.table())
    summary["int8"] = _row(int8, report)
    echo("\nsummary (359 held-out digits, vs the PyTorch FP32 reference):")
    echo(f"  {'model':<28}{'top-1 agreement':>16}{'accuracy':>10}{'gate':>6}")
    for prec in ("fp32", "fp16", "int8"):
        r = summary[prec]
        echo(f"  {Path(r['onnx']).name:<28}{r['top1_agreement']:>15.2%}{r['accuracy']:>9.2f}%{'PASS' if r['passed'] else 'FAIL':>6}")
    echo(f"done in {time.perf_counter() - t0:.1f} s. Next: alexnet-predict {workdir / 'cifar10-digits.onnx'} IMAGE..., "
         f"alexnet-bench {workdir}/*.onnx --engine ort,torch")
    return summary


def _row(path: Path, report) -> dict:
    held = next(s for s in report.sets if s.name.startswith("digits"))
    return {"onnx": str(path), "passed": report.passed, "top1_agreement": held.metrics["top1_agreement"],
            "accuracy": held.metrics.get("cand_accuracy", float("nan")), "sets": report.to_dict()["sets"]}
