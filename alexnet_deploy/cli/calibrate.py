"""`alexnet-calibrate` command."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)
from alexnet_deploy.errors import UserInputError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="QDQ INT8 ONNX to write.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits | CIFAR-10 folder | ImageFolder tree | FILE.npy | synthetic (needs --allow-synthetic).")
@click.option("--num-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="Calibration images (class-balanced, deterministic, from the training split).")
@click.option("--eval-images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out images for the FP32-vs-INT8 accuracy comparison.")
@click.option("--method", default="minmax", show_default=True, help="minmax | entropy | percentile | auto (best of the three).")
@click.option("--percentile", type=float, default=99.999, show_default=True)
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Keep the most sensitive layers in float until the held-out drop is within this many points.")
@click.option("--sensitivity", is_flag=True, help="Report per-layer sensitivity (one layer in float at a time).")
@click.option("--allow-synthetic", is_flag=True, help="Allow --dataset synthetic (random data; not recommended).")
@click.option("--variant", default=None, help="Variant defaults for a model without alexnet-deploy metadata.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Keep/reuse ONNX Runtime's calibration ranges here (checked against provenance).")
@click.option("--force-cache", is_flag=True, help="Use --cache even when its provenance does not match (experts).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@_handle_errors
def calibrate_cmd(model, output, dataset, num_images, eval_images, method, percentile, max_drop, sensitivity,
                  allow_synthetic, variant, cache, force_cache, json_path):
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
    if json_path:
        check_writable(json_path)
    result = calibrate(model, output, dataset=dataset, num_images=num_images, eval_images=eval_images,
                       method=method, percentile=percentile, max_drop=max_drop, sensitivity=sensitivity,
                       allow_synthetic=allow_synthetic, variant=variant, cache=cache, force_cache=force_cache,
                       echo=click.echo)
    click.echo(summary_table(result))
    if json_path:
        atomic_write_bytes(json_path, dump({
            "output": str(result.output), "chosen": result.chosen.row(), "tried": [e.row() for e in result.tried],
            "sensitivity": result.sensitivity, "provenance": result.provenance}).encode())
