"""INT4 classifier study (issue 13): train the digits checkpoints it needs (cached under artifacts/),
then export, calibrate and compare FP32 / INT8 QDQ / INT8-conv + INT4-FC on the held-out split.

    python -m alexnet_deploy.studies.int4_study train [--variant bn|torchvision]
    python -m alexnet_deploy.studies.int4_study accuracy --out docs/benchmarks/int4-accuracy.json

Benchmarks are not tests: this prints a table and writes JSON; nothing here is run by pytest.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Training recipes as data: modest epochs so the torchvision variant (61 M parameters) trains on two
# shared CPU cores in well under an hour; digits are upscaled to the variant's input size.
RECIPES = {  # digits upscaled to the variant's input size; shared with int8_placement.py
    "cifar10": {"epochs": 30, "batch_size": 64, "lr": 0.02},
    "bn": {"epochs": 12, "batch_size": 32, "lr": 0.02},
    "torchvision": {"epochs": 15, "batch_size": 32, "lr": 0.01},
}
ARTIFACTS = Path("artifacts/int4")


def checkpoint_path(variant: str, root: Path = ARTIFACTS) -> Path:
    return root / f"{variant}-digits.pt"


def train_variant(variant: str, root: Path = ARTIFACTS, threads: int | None = None, progress: bool = True) -> Path:
    """Train ``variant`` on the digits train split unless a checkpoint is already cached."""
    path = checkpoint_path(variant, root)
    if path.is_file():
        print(f"{variant}: using cached checkpoint {path}")
        return path
    from alexnet_deploy.data.datasets import load_dataset
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.training.train import TrainConfig, train

    root.mkdir(parents=True, exist_ok=True)
    train_set, held = load_dataset("digits", "train"), load_dataset("digits", "heldout")
    loaded = load_model(variant, "random", num_classes=10, seed=0, class_names=train_set.class_names)
    r = RECIPES[variant]
    cfg = TrainConfig(epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=0, threads=threads)
    result = train(loaded, train_set, held, cfg, path, progress=progress)
    print(f"{variant}: held-out {result.heldout_accuracy:.2%} after {cfg.epochs} epochs, {result.seconds:.0f} s")
    return path


def _accuracy(path: Path, x, y) -> float:
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    with OrtRunner(path, read_onnx_metadata(path)) as r:
        return 100.0 * float((r.infer_batches(x, 32).argmax(1) == y).mean())


def study_variant(variant: str, root: Path = ARTIFACTS, block_size: int = 256, calib_images: int = 256,
                  trt_build: bool = True, random_weights: bool = False, placement: str = "ort") -> dict:
    """Export, calibrate INT8, make both INT4-FC forms, and measure held-out digits top-1 of each.
    ``random_weights``: seeded random weights instead of the trained checkpoint (speed and size only; the
    accuracy columns then say nothing)."""
    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.int4 import quantize_fc, summary_table
    from alexnet_deploy.calibration.placement import placement_for
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.exporter.onnx_export import export_onnx
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    tag = f"{variant}-random" if random_weights else f"{variant}-digits"
    ckpt = None if random_weights else train_variant(variant, root)
    fp32 = root / f"{tag}.onnx"
    if not fp32.is_file():
        loaded = load_model(variant, "random") if random_weights else load_model(None, str(ckpt))
        export_onnx(loaded, fp32)
    int8 = root / f"{tag}-int8-{placement}.onnx"
    if not int8.is_file():
        # placement "ort" (alexnet-calibrate's default): ORT fuses it into QLinearConv / QGemm, the fast CPU INT8 model
        calibrate(fp32, int8, dataset="digits", num_images=calib_images, eval_images=1000, placement=placement)
    int8_trt = root / f"{tag}-int8-tensorrt.onnx"  # the trt form's convolutions: TensorRT's Q/DQ placement
    if not int8_trt.is_file():
        calibrate(fp32, int8_trt, dataset="digits", num_images=calib_images, eval_images=1000,
                  placement=placement_for("trt"))
    res = {}
    for form, base in (("ort", int8), ("trt", int8_trt)):
        out = root / f"{tag}-int4fc-{form}.onnx"
        r = quantize_fc(fp32, base, out, block_size=block_size, form=form, dataset="digits", eval_images=1000,
                        sensitivity=form == "ort")
        print(summary_table(r))
        res[form] = r
    meta = read_onnx_metadata(fp32)
    held = load_calibration_set("digits", meta, 1000, "heldout")
    rows = []
    for label, path in (("FP32", fp32), (f"INT8 QDQ ({placement} placement)", int8),
                        ("INT8 QDQ (tensorrt placement)", int8_trt),
                        ("INT8 conv + INT4 FC (ort: MatMulNBits)", res["ort"].output),
                        ("INT8 conv + INT4 FC (trt: INT4 DequantizeLinear, tensorrt-placement conv)", res["trt"].output)):
        acc = _accuracy(path, held.x, held.labels)
        rows.append({"model": label, "file": path.name, "file_bytes": path.stat().st_size,
                     "sha256": sha256_file(path), "heldout_top1_pct": acc})
    for r in rows:
        r["drop_vs_fp32_pct"] = rows[0]["heldout_top1_pct"] - r["heldout_top1_pct"]
    out = {"variant": variant, "dataset": "digits (scikit-learn), held-out split", "heldout_images": int(len(held.x)),
           "heldout_sha256": held.fingerprint, "block_size": block_size, "calibration_images": calib_images,
           "int8_placement": placement,
           "weights": "seeded random (speed and size only)" if random_weights else "trained on digits",
           "checkpoint_sha256": sha256_file(ckpt) if ckpt else None, "rows": rows, "sensitivity": res["ort"].sensitivity,
           "int4_provenance": res["ort"].provenance}
    if trt_build:
        out["tensorrt_rtx"] = _trt_build(res["trt"].output, root)
    for r in rows:
        print(f"{r['model']:<72} {r['heldout_top1_pct']:6.2f}%  drop {r['drop_vs_fp32_pct']:+.2f}  "
              f"{r['file_bytes'] / 1e6:6.1f} MB")
    return out


def _trt_build(onnx_path: Path, root: Path) -> dict:
    """Parse and build the trt form with TensorRT-RTX (no GPU needed); the exact message if it refuses."""
    from alexnet_deploy.errors import AlexnetDeployError
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine

    try:
        r = build_engine(onnx_path, root / (onnx_path.stem + ".plan"), TrtBuildOptions(precision="int8"))
    except AlexnetDeployError as exc:
        return {"built": False, "message": str(exc)}
    return {"built": True, "library": r.manifest["library"], "engine_bytes": r.manifest["engine_bytes"],
            "target_compute_capability": r.manifest["target_compute_capability"], "seconds": r.seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or reuse) the digits checkpoints")
    t.add_argument("--variant", action="append", choices=sorted(RECIPES))
    t.add_argument("--threads", type=int, default=None)
    a = sub.add_parser("accuracy", help="export, calibrate, INT4-FC both forms, held-out accuracy, TensorRT-RTX build")
    a.add_argument("--variant", action="append", choices=sorted(RECIPES))
    a.add_argument("--block-size", type=int, default=256)
    a.add_argument("--out", type=Path, default=Path("docs/benchmarks/int4-accuracy.json"))
    a.add_argument("--random-weights", action="store_true", help="seeded random weights (speed/size runs)")
    a.add_argument("--no-trt", action="store_true", help="skip the TensorRT-RTX build")
    a.add_argument("--calib-images", type=int, default=256)
    a.add_argument("--placement", default="ort", choices=["ort", "all", "tensorrt"],
                   help="INT8 Q/DQ placement of the convolutions (ort: alexnet-calibrate's default)")
    args = p.parse_args(argv)
    if args.cmd == "train":
        for v in args.variant or ["bn", "torchvision"]:
            train_variant(v, threads=args.threads)
    elif args.cmd == "accuracy":
        from alexnet_deploy.fileio import atomic_write_json

        results = {}
        if args.out.is_file():
            results = json.loads(args.out.read_text())
        for v in args.variant or ["bn", "torchvision"]:
            key = f"{v}-random" if args.random_weights else v
            results[key] = study_variant(v, block_size=args.block_size, trt_build=not args.no_trt,
                                         random_weights=args.random_weights, calib_images=args.calib_images,
                                         placement=args.placement)
            atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
