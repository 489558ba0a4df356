"""`alexnet-export` command."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.cli.export_kserve import export_kserve_cmd
from alexnet_deploy.cli.common import (
    _handle_errors,
    _int_list,
    _setup_logging,
    _weights_options,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
def export_group():
    """Export models: `onnx` (PyTorch -> verified ONNX), `trt` (ONNX -> TensorRT engine + manifest)."""


export_group.add_command(export_kserve_cmd)  # alexnet-export kserve (cli/export_kserve.py)


def _preprocessing_options(fn):
    """--mean/--std/--input-size/--interpolation/--labels: the preprocessing and classes of a model that does not
    carry ours (a Keras file without Rescaling/Normalization layers, an ONNX model from elsewhere)."""
    fn = click.option("--labels", type=click.Path(dir_okay=False), default=None,
                      help="Class names, one per line (default: NAME.labels.txt / labels.txt next to a Keras file).")(fn)
    fn = click.option("--interpolation", type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos"]), default=None,
                      help="Resize filter (default: the variant's, bilinear).")(fn)
    fn = click.option("--input-size", type=click.IntRange(min=1), default=None,
                      help="Input height = width the model takes; images are resized (shorter side) to it and "
                           "center-cropped (default: the variant's).")(fn)
    fn = click.option("--std", default=None, metavar="R,G,B", help="Normalization std on 0..1 pixels.")(fn)
    fn = click.option("--mean", default=None, metavar="R,G,B",
                      help="Normalization mean on 0..1 pixels: the model takes (pixels/255 - mean) / std.")(fn)
    return fn


def _floats3(text: str | None, option: str):
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.5,0.5") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not all(v == v and abs(v) != float("inf") for v in vals):
        raise UserInputError(f"{option} needs 1 or 3 finite numbers (R,G,B), got {text!r}")
    return tuple(vals)


def _apply_preprocessing(loaded, source, mean, std, input_size, interpolation):
    """The --mean/--std/... options applied to a loaded model (in place); a Keras model that does not say its
    normalization and got no --mean/--std is refused in one line. Returns where the options came from, or None
    when none was given."""
    keras_layers = bool(loaded.info.get("keras", {}).get("preprocessing_layers"))
    prep, given = _preprocessing(loaded.preprocessing, loaded.variant, mean, std, input_size, interpolation,
                                 keras_layers=keras_layers)
    if loaded.info.get("preprocessing_unknown") and not (mean and std):
        from alexnet_deploy.models.keras_h5 import preprocessing_unknown_message

        raise UserInputError(preprocessing_unknown_message(source))
    if prep is None:
        return None
    loaded.preprocessing = prep
    return given


def _preprocessing(base, variant: str, mean, std, input_size, interpolation, *, keras_layers: bool = False):
    """``base`` with the options applied (None where none was given) and where they came from."""
    from dataclasses import replace

    from alexnet_deploy.models.specs import get_variant

    mean, std = _floats3(mean, "--mean"), _floats3(std, "--std")
    if std is not None and any(v <= 0 for v in std):
        raise UserInputError(f"--std must be positive, got {','.join(map(str, std))}")
    if keras_layers and (mean is not None or std is not None):
        raise UserInputError("the Keras model normalizes its input itself (Rescaling/Normalization layers); "
                             "drop --mean/--std")
    if (mean is None) != (std is None):
        raise UserInputError("give --mean and --std together")
    given = [o for o, v in (("--mean/--std", mean), ("--input-size", input_size), ("--interpolation", interpolation))
             if v is not None]
    if not given:
        return None, ""
    spec = get_variant(variant)
    if input_size is not None and input_size != spec.input_size and variant != "torchvision":
        raise UserInputError(f"variant {variant!r} takes {spec.input_size}x{spec.input_size} inputs (its first "
                             f"Dense layer fixes the size), not {input_size}")
    prep = replace(base, **({"mean": mean, "std": std} if mean is not None else {}),
                   **({"resize": input_size, "crop": input_size} if input_size is not None else {}),
                   **({"interpolation": interpolation} if interpolation is not None else {}))
    return prep, " ".join(given)


@export_group.command("onnx")
@_weights_options
@_preprocessing_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="ONNX file to write.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Static batch size (default: dynamic).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="FP16 weights and compute; inputs/outputs stay float32.")
@click.option("--input-format", type=click.Choice(["float-nchw", "uint8-nhwc", "float-0-255", "float-nhwc"]),
              default="float-nchw", show_default=True,
              help="Graph input: normalized float NCHW, or raw RGB pixels at the input size (uint8 NHWC / float "
              "0..255 NCHW) with scale and normalization as explicit nodes in the graph, or normalized float NHWC. "
              "With --weights MODEL.onnx: the layout that model takes (Keras' ONNX export: float-nhwc).")
@click.option("--keras-reference", default=None, metavar="DIR",
              help="Keras imports: Keras' own outputs to gate the export against (default: NAME.keras-reference "
                   "next to the Keras file when present, written by `alexnet-export keras-reference`; none: skip).")
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
                    no_check, tol, json_path, dataset, verbose, input_format, mean, std, input_size, interpolation,
                    labels, keras_reference):
    """Export a variant + weights to a simplified ONNX model with metadata, checked against PyTorch.

    --weights takes PyTorch checkpoints, Keras models (.keras, .h5, .weights.h5: read with h5py, matched onto a
    variant, gated against Keras' own outputs when NAME.keras-reference is present), or an ONNX model made
    elsewhere (MODEL.onnx with --variant, --input-format and --mean/--std: the same graph with our metadata)."""
    _setup_logging(verbose)
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable, refuse_overlapping_paths
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.parity.tolerances import parse_overrides

    refuse_overlapping_paths(inputs={"--weights": None if weights in ("random", "imagenet") else weights,
                                     "--labels": labels, "--keras-reference": keras_reference},
                             outputs={"--output": output, "--json": json_path})
    check_writable(output, "--output")
    overrides = parse_overrides(tol)
    if weights.lower().endswith(".onnx"):
        ctx = click.get_current_context()
        extra = [f"--{n.replace('_', '-')}" for n in ("batch", "fp16", "softmax", "no_check", "tol", "json_path",
                                                      "dataset", "keras_reference", "seed")
                 if ctx.get_parameter_source(n) is not None and ctx.get_parameter_source(n).name != "DEFAULT"]
        if extra:
            raise UserInputError(f"an ONNX model from elsewhere is adopted as it is: drop {', '.join(extra)} (check it "
                                 "with alexnet-parity afterwards)".replace("--json-path", "--json"))
        _adopt_onnx(weights, output, variant, num_classes, input_format, mean, std, input_size, interpolation, labels,
                    simplify=not no_simplify)
        return
    from alexnet_deploy.models.keras_h5 import is_keras_file, keras_summary, read_labels

    keras = is_keras_file(weights)
    names = read_labels(Path(labels), _count_lines(labels)) if labels else None
    loaded = load_model(variant, weights, num_classes=num_classes, seed=seed, softmax=softmax, class_names=names)
    if keras:
        click.echo(keras_summary(loaded))
    given = _apply_preprocessing(loaded, weights, mean, std, input_size, interpolation)
    if given is not None:
        loaded.info["preprocessing_from"] = given
        loaded.info.pop("preprocessing_unknown", None)
    opts = ExportOptions(opset=opset, batch=batch, fp16=fp16, simplify=not no_simplify, check=not no_check,
                         tolerance_overrides=overrides, dataset=dataset or "auto")
    opts.input_format = input_format
    opts.keras_reference = keras_reference
    if keras and keras_reference != "none" and opts.check:
        from alexnet_deploy.parity.keras_reference import find_reference

        if find_reference(loaded, keras_reference) is None:
            click.echo(f"note: no Keras outputs next to {weights} (write them where Keras runs: alexnet-export "
                       "keras-reference); checked against its PyTorch port only")
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


def _count_lines(path) -> int:
    try:
        return len([ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()])
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read labels file {path}: {exc}") from None


def _adopt_onnx(weights, output, variant, num_classes, input_format, mean, std, input_size, interpolation, labels,
                simplify=True):
    """An ONNX model from elsewhere -> the same computation with our metadata, after checking its input/output and
    running it once on ONNX Runtime. onnxsim folds the exporter's constant chains (Keras' export has ~100 nodes
    for 40 ops) and Constant nodes become initializers, so alexnet-calibrate and TensorRT take it; alexnet-parity
    then compares the result with the original file."""
    import os

    import numpy as np
    import onnx

    from alexnet_deploy.exporter.input_format import adopt_onnx, check
    from alexnet_deploy.fileio import atomic_path, printable_path, sha256_bytes, sha256_file
    from alexnet_deploy.models.keras_h5 import read_labels
    from alexnet_deploy.models.specs import default_class_names, get_variant
    from alexnet_deploy.runtime.metadata import ModelMetadata, set_metadata

    if variant is None:
        raise UserInputError("an ONNX model from elsewhere needs --variant (which architecture it is)")
    if mean is None or std is None:
        raise UserInputError("an ONNX model from elsewhere needs --mean and --std (what its input is normalized "
                             "with: (pixels/255 - mean) / std)")
    spec = get_variant(variant)
    try:
        model = onnx.load(weights)
    except FileNotFoundError:
        raise UserInputError(f"model not found: {weights}") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserInputError(f"{weights} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    prep, given = _preprocessing(spec.preprocessing, variant, mean, std, input_size, interpolation)
    n = num_classes or spec.default_num_classes
    names = read_labels(Path(labels), _count_lines(labels)) if labels else None
    if names is not None:
        n = len(names)
    out = Path(output)
    src = os.path.realpath(weights)
    meta = ModelMetadata(variant=variant, class_names=names or default_class_names(n), preprocessing=prep,
                         input_format=input_format, source_weights=os.path.relpath(src, os.path.realpath(out.parent)),
                         source_sha256=sha256_file(weights),
                         extra={"source_weights_absolute": src, "preprocessing_from": given})
    model, meta = adopt_onnx(model, meta, printable_path(weights))
    simplified = False
    if simplify:
        from alexnet_deploy.exporter.onnx_export import _simplify

        model, simplified = _simplify(model)
    from alexnet_deploy.exporter.input_format import constants_to_initializers

    constants_to_initializers(model)
    meta.extra["simplified"] = simplified
    from alexnet_deploy import __version__

    meta.versions = {"alexnet_deploy": __version__, "onnx": onnx.__version__}
    set_metadata(model, meta)
    check(model, f"model {printable_path(weights)}")
    data = model.SerializeToString()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        from alexnet_deploy.runtime.preprocess import random_model_input
        from alexnet_deploy.runtime.runners.ort import OrtRunner

        with OrtRunner(str(tmp), meta) as runner:
            y = runner.infer_batches(random_model_input(meta, 2), 2)
        if y.shape != (2, n) or not np.all(np.isfinite(y)):
            raise UserInputError(f"{printable_path(weights)} gives outputs of shape {y.shape} (finite: "
                                 f"{bool(np.all(np.isfinite(y)))}) on random input, expected (2, {n})")
        if meta.output_kind == "probabilities" and not np.allclose(y.sum(1), 1, atol=1e-3):
            raise UserInputError(f"{printable_path(weights)} ends in Softmax but its rows do not sum to 1")
    click.echo(f"wrote {out} ({printable_path(weights)} with alexnet-deploy metadata: variant {variant}, input "
               f"{meta.input_name!r} {input_format}, output {meta.output_name!r} {meta.output_kind}, "
               f"sha256 {sha256_bytes(data)[:12]}); parity against its own outputs: alexnet-parity {out}")


@export_group.command("keras-reference")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default: NAME.keras-reference next to MODEL).")
@click.option("--dataset", default=None,
              help="Held-out images to run (digits | CIFAR-10 folder | ImageFolder tree); default: seeded random pixels.")
@click.option("--num-images", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--variant", default=None, help="Variant to match (default: the one whose layers are the model's).")
@_preprocessing_options
@_handle_errors
def keras_reference_cmd(model, out_dir, dataset, num_images, variant, mean, std, input_size, interpolation, labels):
    """Where Keras runs: Keras' own outputs for MODEL (.keras / .h5) as a golden set next to it, the reference
    that `alexnet-export onnx --weights MODEL` and alexnet-parity gate the import against (needs keras)."""
    _setup_logging()
    from alexnet_deploy.fileio import refuse_overlapping_paths
    from alexnet_deploy.models.keras_h5 import load_keras_model, read_labels
    from alexnet_deploy.parity.keras_reference import default_reference_dir, write_keras_reference

    out = Path(out_dir) if out_dir else default_reference_dir(model)
    refuse_overlapping_paths(inputs={"the model": model, "--dataset": dataset, "--labels": labels},
                             outputs={"--out": out})
    if out.exists() and not (out / "manifest.json").is_file():
        raise UserInputError(f"{out} exists and is not a Keras reference folder; choose another --out")
    names = read_labels(Path(labels), _count_lines(labels)) if labels else None
    loaded = load_keras_model(model, variant, class_names=names)
    _apply_preprocessing(loaded, model, mean, std, input_size, interpolation)
    write_keras_reference(model, out, dataset=dataset, num_images=num_images, loaded=loaded, echo=click.echo)


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
@click.argument("model", type=click.Path(), nargs=-1, required=True, metavar="MODEL...")
@click.option("--repo", type=click.Path(file_okay=False), required=True, help="Model repository folder.")
@click.option("--name", default="alexnet", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size (default: 32 for an .onnx model; a .plan's optimization profile max, never above it).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Instance group kind (default: gpu for a .plan, else gpu only if this host shows an NVIDIA GPU).")
@click.option("--preferred-batch", default="", help="Comma-separated preferred batch sizes.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@_handle_errors
def export_triton_cmd(model, repo, name, max_batch, instances, kind, preferred_batch, max_queue_delay_us):
    """Write a Triton Inference Server model repository (config.pbtxt, labels, model in version 1).

    MODEL is one .onnx model or .plan engine, or several .plan engines of one ONNX model built for different
    GPU architectures: they share version 1, and Triton picks the one for its GPU (cc_model_filenames)."""
    from alexnet_deploy.exporter.triton import export_triton

    root = export_triton(list(model) if len(model) > 1 else model[0], repo, name=name, max_batch=max_batch,
                         instances=instances, kind=kind, preferred=list(_int_list(preferred_batch)),
                         max_queue_delay_us=max_queue_delay_us, echo=click.echo)
    text = (root / "config.pbtxt").read_text()
    kind = "gpu" if "KIND_GPU" in text else "cpu"
    per_gpu = ""
    if len(model) > 1:
        import re

        per_gpu = "; engines for compute capability " + ", ".join(re.findall(r'key: "([0-9.]+)"', text))
    click.echo(f"wrote {root}/config.pbtxt ({kind} instances{per_gpu}) and {root}/1/; serve with: "
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
