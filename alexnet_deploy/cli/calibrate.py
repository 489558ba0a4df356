"""`alexnet-calibrate` command."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)
from alexnet_deploy.errors import UserInputError

# calibration/placement.py Placement's values, spelled here so that --help needs no onnx (a test keeps them equal)
PLACEMENT_CHOICES = ("ort", "tensorrt", "all")


def _placement(ctx, param, value):
    """--placement parsed once, into the enum every stage below takes (None: chosen from the target below)."""
    if value is None:
        return None
    from alexnet_deploy.calibration.placement import Placement

    return Placement.parse(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="QDQ INT8 ONNX to write.")
@click.option("--dataset", default=None,
              help="digits | CIFAR-10 folder | ImageFolder tree | FILE.npy | synthetic (needs --allow-synthetic); "
                   "default: the training dataset recorded in the model (digits for digit classes).")
@click.option("--num-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Calibration images (class-balanced, deterministic, from the training split; MLPerf uses 500).")
@click.option("--eval-images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out images for the FP32-vs-INT8 accuracy comparison.")
@click.option("--method", default="minmax", show_default=True, help="minmax | entropy | percentile | auto (best of the three).")
@click.option("--percentile", type=float, default=99.999, show_default=True,
              help="With --method percentile: clip activations at this percentile of |x| (65,536-bin histogram).")
@click.option("--placement", type=click.Choice(PLACEMENT_CHOICES), default=None, callback=_placement,
              help="ort (default; tensorrt with --int4-format trt): every tensor but the logits, UINT8 asymmetric "
                   "activations (the fast INT8 kernels of ONNX Runtime CPU; TensorRT cannot parse it); tensorrt: "
                   "symmetric Q/DQ only on the inputs of Conv/Gemm (logits float), as TensorRT wants, 3-10x slower "
                   "on ONNX Runtime CPU; all: every tensor, logits too, symmetric INT8. "
                   "See docs/benchmarks/int8-placement.md.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Keep the most sensitive layers in float until the held-out drop is within this many points.")
@click.option("--sensitivity", is_flag=True, help="Report per-layer sensitivity (one layer in float at a time).")
@click.option("--allow-synthetic", is_flag=True, help="Allow --dataset synthetic (random data; not recommended).")
@click.option("--variant", default=None, help="Variant defaults for a model without alexnet-deploy metadata.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Keep/reuse the activation ranges (JSON) here (checked against provenance).")
@click.option("--force-cache", is_flag=True, help="Use --cache even when its provenance does not match (experts).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@click.option("--weights-fc", type=click.Choice(["int8", "int4"]), default="int8", show_default=True,
              help="Classifier (FC) weights: int8 QDQ, or int4 block-wise weight-only (convolutions stay INT8).")
@click.option("--block-size", type=int, default=256, show_default=True,
              help="With --weights-fc int4: input features per 4-bit scale (16..256, a power of two).")
@click.option("--int4-format", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="With --weights-fc int4: ort = MatMulNBits (fastest on ONNX Runtime CPU); trt = opset-21 "
                   "blocked DequantizeLinear on INT4 weights + MatMul (TensorRT).")
@click.option("--no-overflow-fix", is_flag=True,
              help="Keep 8-bit weights in channels whose UINT8 x INT8 pair sums can saturate int16 on x86 AVX2 / "
                   "AVX-512 without VNNI (only for targets with VNNI, AMX or ARM64; see docs/calibration.md).")
@click.option("--allow-kernel-mismatch", is_flag=True,
              help="Write the model even when this host's ONNX Runtime kernels give other results than the exact "
                   "QDQ math (int16 saturation on this CPU); it is refused by default.")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def calibrate_cmd(model, output, dataset, num_images, eval_images, method, percentile, max_drop, sensitivity,
                  allow_synthetic, variant, cache, force_cache, json_path, weights_fc, block_size, int4_format,
                  placement, no_overflow_fix, allow_kernel_mismatch):
    """Quantize an FP32 ONNX model to QDQ INT8 (ONNX Runtime, TensorRT 11, TensorRT-RTX), accuracy first."""
    _setup_logging()
    from alexnet_deploy.calibration.qdq import dump
    from alexnet_deploy.calibration.run import calibrate, summary_table
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable
    from alexnet_deploy.runtime.runners.factory import model_kind

    if model_kind(model) != "onnx":
        raise UserInputError(f"{model} is not an ONNX model; export it first with alexnet-export onnx")
    if not Path(model).is_file():
        raise UserInputError(f"model not found: {model}")
    from alexnet_deploy.data.datasets import dataset_for_model
    from alexnet_deploy.fileio import refuse_overlapping_paths
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    refuse_overlapping_paths(inputs={"the model": model, "--dataset": dataset},
                             outputs={"--output": output, "--json": json_path, "--cache": cache})
    if json_path:
        check_writable(json_path, "--json")
    meta = read_onnx_metadata(model, variant)
    dataset = dataset_for_model(dataset, meta.class_names, meta.training_dataset)
    if dataset is None:
        raise UserInputError("calibration needs images: give --dataset (none is not an option here)")
    from alexnet_deploy.calibration.int4 import FcStage
    from alexnet_deploy.calibration.int4 import summary_table as int4_table
    from alexnet_deploy.calibration.placement import Placement, placement_for
    from alexnet_deploy.calibration.run import CalibrationOptions

    trt_form = weights_fc == "int4" and int4_format == "trt"
    if placement is None:  # the trt INT4 form is for TensorRT: its convolutions need TensorRT's Q/DQ too
        placement = placement_for("trt" if trt_form else "onnx")
    if trt_form and placement is Placement.ORT:  # before any calibration work
        raise UserInputError("--int4-format trt is for TensorRT, which cannot parse --placement ort (UINT8 "
                             "activations for ONNX Runtime); use --placement tensorrt (the default with trt)")

    with FcStage(weights_fc, output, block_size, int4_format) as fc:  # int4: INT8 to a temporary first
        opts = CalibrationOptions(dataset=dataset, num_images=num_images, eval_images=eval_images, method=method,
                                  percentile=percentile, max_drop=max_drop, sensitivity=sensitivity,
                                  allow_synthetic=allow_synthetic, variant=variant, cache=cache,
                                  force_cache=force_cache, placement=placement, overflow_fix=not no_overflow_fix,
                                  allow_kernel_mismatch=allow_kernel_mismatch)
        result = calibrate(model, fc.int8_output, opts, echo=click.echo)
        click.echo(summary_table(result))
        if fc.finish(model, dataset=dataset, eval_images=eval_images, max_drop=max_drop, sensitivity=sensitivity,
                     allow_synthetic=allow_synthetic, echo=click.echo):
            click.echo(int4_table(fc.result))
    if json_path:
        atomic_write_bytes(json_path, dump(result.to_dict() | fc.json()).encode())
