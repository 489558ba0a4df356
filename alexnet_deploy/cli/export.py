"""`alexnet-export` command."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.cli.common import (
    _handle_errors,
    _int_list,
    _setup_logging,
    _weights_options,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export_group():
    """Export models: `onnx` (PyTorch -> verified ONNX), `trt` (ONNX -> TensorRT engine + manifest)."""


@export_group.command("onnx")
@_weights_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="ONNX file to write.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Static batch size (default: dynamic).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="FP16 weights and compute; inputs/outputs stay float32.")
@click.option("--input-format", type=click.Choice(["float-nchw", "uint8-nhwc", "float-0-255"]), default="float-nchw",
              show_default=True, help="Graph input: normalized float NCHW, or raw RGB pixels at the input size "
              "(uint8 NHWC / float 0..255 NCHW) with scale and normalization as explicit nodes in the graph.")
@click.option("--softmax", is_flag=True, help="End in softmax (plain variant only).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--no-check", is_flag=True, help="Skip the parity check against PyTorch (not recommended).")
@click.option("--tol", multiple=True, metavar="NAME=VALUE", help="Override a parity tolerance, e.g. max_abs=1e-2.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the parity report as JSON.")
@click.option("--dataset", default=None,
              help="Labelled images for the parity check: digits | CIFAR-10 folder | ImageFolder tree | none "
                   "(default: the training dataset recorded in the weights; digits for digit classes).")
@click.option("-v", "--verbose", is_flag=True)
@_handle_errors
def export_onnx_cmd(variant, weights, num_classes, seed, output, batch, opset, fp16, softmax, no_simplify,
                    no_check, tol, json_path, dataset, verbose, input_format):
    """Export a variant + weights to a simplified ONNX model with metadata, checked against PyTorch."""
    _setup_logging(verbose)
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable, refuse_overlapping_paths
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.parity.tolerances import parse_overrides

    refuse_overlapping_paths(inputs={"--weights": None if weights in ("random", "imagenet") else weights},
                             outputs={"--output": output, "--json": json_path})
    check_writable(output)
    overrides = parse_overrides(tol)
    loaded = load_model(variant, weights, num_classes=num_classes, seed=seed, softmax=softmax)
    opts = ExportOptions(opset=opset, batch=batch, fp16=fp16, simplify=not no_simplify, check=not no_check,
                         tolerance_overrides=overrides, dataset=dataset or "auto")
    opts.input_format = input_format
    result = export_onnx(loaded, output, opts)
    if result.report is not None:
        click.echo(result.report.table())
        if json_path:
            atomic_write_bytes(json_path, result.report.to_json().encode())
    extras = []
    if result.folded_batchnorms:
        extras.append(f"folded BatchNorm {', '.join(result.folded_batchnorms)}")
    if not result.simplified and opts.simplify:
        extras.append("onnxsim could not simplify (kept the original graph)")
    click.echo(f"wrote {result.path} ({result.metadata.precision}, opset {opset}, "
               f"batch {batch or 'dynamic'}, sha256 {result.sha256[:12]})" + (f"; {'; '.join(extras)}" if extras else ""))


@export_group.command("trt")
@click.argument("model", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="Engine file (.plan).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--library", default="auto", show_default=True, help="auto | tensorrt | tensorrt_rtx (when both are installed).")
@click.option("--min-batch", type=click.IntRange(min=1), default=None)
@click.option("--opt-batch", type=click.IntRange(min=1), default=None)
@click.option("--max-batch", type=click.IntRange(min=1), default=None)
@click.option("--workspace-mb", type=click.IntRange(min=16), default=1024, show_default=True)
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, help="Read and update this timing cache.")
@click.option("--dla-core", type=click.IntRange(min=0), default=None, help="Jetson DLA core (GPU fallback on).")
@click.option("--version-compatible", is_flag=True)
@click.option("--hardware-compatibility", type=click.Choice(["none", "ampere+", "same-cc"]), default="none", show_default=True)
@click.option("--compute-capability", default=None, help="TensorRT-RTX: target, e.g. sm86 (default: this GPU, or sm86 without one).")
@click.option("--calib-dataset", default=None,
              help="INT8 calibration data (see alexnet-calibrate; default: the model's recorded training dataset).")
@click.option("--calib-images", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None, help="TensorRT <= 10 calibration cache.")
@click.option("--calib-algorithm", type=click.Choice(["entropy2", "minmax"]), default="entropy2", show_default=True)
@click.option("--force-cache", is_flag=True, help="Use a calibration cache whose provenance does not match.")
@click.option("-v", "--verbose", is_flag=True)
@_handle_errors
def export_trt_cmd(model, output, precision, library, min_batch, opt_batch, max_batch, workspace_mb, timing_cache,
                   dla_core, version_compatible, hardware_compatibility, compute_capability, calib_dataset,
                   calib_images, calib_cache, calib_algorithm, force_cache, verbose):
    """Build a TensorRT engine (+ manifest) from an exported ONNX model."""
    _setup_logging(verbose)
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
    from alexnet_deploy.fileio import refuse_overlapping_paths
    from alexnet_deploy.runtime.trt_library import manifest_path

    derived = {}
    if precision != "fp32" and Path(model).is_file():
        from alexnet_deploy.data.datasets import dataset_for_model
        from alexnet_deploy.runtime.metadata import read_onnx_metadata

        meta = read_onnx_metadata(model)
        if meta.precision != precision:  # a strongly typed builder gets a derived ONNX next to the engine
            out = Path(output)
            derived[f"the derived {precision.upper()} ONNX"] = out.with_name(f"{out.stem}.{precision}.onnx")
        if precision == "int8" and meta.precision != "int8":  # calibration data must match the model's classes
            calib_dataset = dataset_for_model(calib_dataset, meta.class_names, meta.training_dataset,
                                              "--calib-dataset")
            if calib_dataset is None:
                raise UserInputError("an INT8 engine from an FP32 model needs calibration images; give --calib-dataset")
    refuse_overlapping_paths(inputs={"the model": model, "--calib-dataset": calib_dataset},
                             outputs={"--output": output, "the manifest": manifest_path(output),
                                      "--timing-cache": timing_cache, "--calib-cache": calib_cache, **derived})
    opts = TrtBuildOptions(precision=precision, library=library, min_batch=min_batch, opt_batch=opt_batch,
                           max_batch=max_batch, workspace_mb=workspace_mb, timing_cache=timing_cache, dla_core=dla_core,
                           version_compatible=version_compatible, hardware_compatibility=hardware_compatibility,
                           compute_capability=compute_capability, calib_dataset=calib_dataset,
                           calib_images=calib_images, calib_cache=calib_cache, calib_algorithm=calib_algorithm,
                           force_cache=force_cache)
    build_engine(model, output, opts, echo=click.echo)


@export_group.command("triton")
@click.argument("model", type=click.Path())
@click.option("--repo", type=click.Path(file_okay=False), required=True, help="Model repository folder.")
@click.option("--name", default="alexnet", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Instance group kind (default: gpu for a .plan, else gpu only if this host shows an NVIDIA GPU).")
@click.option("--preferred-batch", default="", help="Comma-separated preferred batch sizes.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@_handle_errors
def export_triton_cmd(model, repo, name, max_batch, instances, kind, preferred_batch, max_queue_delay_us):
    """Write a Triton Inference Server model repository (config.pbtxt, labels, model in version 1)."""
    from alexnet_deploy.server.triton import export_triton

    root = export_triton(model, repo, name=name, max_batch=max_batch, instances=instances, kind=kind,
                         preferred=list(_int_list(preferred_batch)), max_queue_delay_us=max_queue_delay_us)
    kind = "gpu" if "KIND_GPU" in (root / "config.pbtxt").read_text() else "cpu"
    click.echo(f"wrote {root}/config.pbtxt ({kind} instances) and {root}/1/; serve with: "
               f"tritonserver --model-repository {repo}")


@export_group.command("deepstream")
@click.argument("model", type=click.Path())
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="network-mode (auto: the model's precision).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threshold", type=float, default=0.5, show_default=True, help="classifier-threshold (a probability).")
@click.option("--gpu-id", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT <= 10 calibration cache (INT8 from an FP32 model); copied next to the config.")
@click.option("--video", default=None, help="URI the sample deepstream-app config plays (default: a DeepStream sample).")
@click.option("--no-check", is_flag=True, help="Skip checking the exported graph against MODEL.")
@_handle_errors
def export_deepstream_cmd(model, out_dir, precision, batch_size, threshold, gpu_id, calib_cache, video, no_check):
    """DeepStream gst-nvinfer classifier: ONNX with normalization in the graph, nvinfer config, labels, and a
    deepstream-app config that plays a file."""
    _setup_logging()
    from alexnet_deploy.exporter.deepstream import SAMPLE_VIDEO, DeepStreamOptions, export_deepstream

    opts = DeepStreamOptions(precision=precision, batch_size=batch_size, threshold=threshold, gpu_id=gpu_id,
                             calib_cache=calib_cache, video_uri=video or SAMPLE_VIDEO, check=not no_check)
    result = export_deepstream(model, out_dir, opts)
    if result.report is not None:
        click.echo(result.report.table())
    for p in result.files.values():
        click.echo(f"wrote {p}")
    import shlex

    click.echo(f"run: cd {shlex.quote(str(out_dir))} && deepstream-app -c deepstream_app_config.txt   "
               f"(network-mode={result.network_mode})")


@export_group.command("jetson-inference")
@click.argument("model", type=click.Path())
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--no-check", is_flag=True, help="Skip checking the exported graph against MODEL.")
@_handle_errors
def export_jetson_inference_cmd(model, out_dir, no_check):
    """jetson-inference imageNet: ONNX with input_0 / output_0 (ImageNet normalization corrected in the graph,
    softmax output, batch 1), labels.txt, and the imagenet command lines."""
    _setup_logging()
    from alexnet_deploy.exporter.jetson_inference import export_jetson_inference

    result = export_jetson_inference(model, out_dir, check=not no_check)
    if result.report is not None:
        click.echo(result.report.table())
    for p in result.files.values():
        click.echo(f"wrote {p}")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"run in {click.format_filename(out_dir)}:")
    for cmd in result.commands:
        click.echo(f"  {cmd}")
