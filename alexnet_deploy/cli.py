"""Command-line entry points (click). Thin: each command parses options and calls one stage module.

Every ``AlexnetDeployError`` becomes one line on stderr and a non-zero exit; heavy imports happen inside
the commands so ``--help`` works without torch, onnxruntime or any optional dependency.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from alexnet_deploy.errors import AlexnetDeployError, UserInputError

VARIANT_HELP = "cifar10 | torchvision | paper | paper-ungrouped | plain | bn"


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AlexnetDeployError as exc:
            msg = str(exc)
            if "\n" in msg:  # details (a parity table) to stdout, the one-line verdict to stderr
                head, _, rest = msg.partition("\n")
                click.echo(rest)
                msg = head
            click.echo(f"error: {msg}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:  # an optional dependency imported at a module's top
            from alexnet_deploy.deps import missing_module_error

            err = missing_module_error(exc)
            if err is None:
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no partial output was kept", err=True)
            sys.exit(130)
        except OSError as exc:  # disk full, permission denied mid-write, ...: one line, not a traceback
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)
    return wrapper


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


def _weights_options(fn):
    fn = click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")(fn)
    fn = click.option("--num-classes", type=click.IntRange(min=1), default=None,
                      help="Class count (default: the variant's, or the checkpoint's).")(fn)
    fn = click.option("--weights", default="random", show_default=True,
                      help="random | imagenet (torchvision variant) | PATH (.pt/.pth/.safetensors).")(fn)
    fn = click.option("--variant", default=None, help=f"{VARIANT_HELP} (default: read from the checkpoint).")(fn)
    return fn


# --------------------------------------------------------------------------------------------- train
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--variant", default="cifar10", show_default=True, help=VARIANT_HELP)
@click.option("--dataset", default="digits", show_default=True,
              help="digits (embedded) | CIFAR-10 python-batch folder | ImageFolder tree.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="Checkpoint to write (.pt or .safetensors).")
@click.option("--weights", default="random", show_default=True, help="Initial weights: random | PATH.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="Peak learning rate (one-cycle schedule), SGD with momentum.")
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_handle_errors
def train_cmd(variant, dataset, output, weights, epochs, batch_size, lr, momentum, weight_decay, seed, threads,
              no_progress):
    """Train an AlexNet variant with SGD + momentum and write a checkpoint (atomically)."""
    _setup_logging()
    from alexnet_deploy.data.datasets import load_dataset
    from alexnet_deploy.fileio import check_writable
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.training.train import TrainConfig, train

    check_writable(output)
    train_set, held = load_dataset(dataset, "train"), load_dataset(dataset, "heldout")
    loaded = load_model(variant, weights, num_classes=len(train_set.class_names), seed=seed,
                        class_names=train_set.class_names)
    click.echo(f"training {loaded.variant} on {dataset}: {len(train_set)} train / {len(held)} held-out images, "
               f"{len(train_set.class_names)} classes")
    result = train(loaded, train_set, held, TrainConfig(epochs, batch_size, lr, momentum, weight_decay, seed, threads),
                   output, progress=not no_progress)
    click.echo(f"held-out accuracy {result.heldout_accuracy:.2%} after {epochs} epochs in {result.seconds:.1f} s; "
               f"checkpoint: {result.checkpoint}")


# -------------------------------------------------------------------------------------------- export
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export_group():
    """Export models: `onnx` (PyTorch -> verified ONNX), `trt` (ONNX -> TensorRT engine + manifest)."""


@export_group.command("onnx")
@_weights_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="ONNX file to write.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Static batch size (default: dynamic).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="FP16 weights and compute; inputs/outputs stay float32.")
@click.option("--softmax", is_flag=True, help="End in softmax (plain variant only).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--no-check", is_flag=True, help="Skip the parity check against PyTorch (not recommended).")
@click.option("--tol", multiple=True, metavar="NAME=VALUE", help="Override a parity tolerance, e.g. max_abs=1e-2.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the parity report as JSON.")
@click.option("-v", "--verbose", is_flag=True)
@_handle_errors
def export_onnx_cmd(variant, weights, num_classes, seed, output, batch, opset, fp16, softmax, no_simplify,
                    no_check, tol, json_path, verbose):
    """Export a variant + weights to a simplified ONNX model with metadata, checked against PyTorch."""
    _setup_logging(verbose)
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.parity.tolerances import parse_overrides

    check_writable(output)
    overrides = parse_overrides(tol)
    loaded = load_model(variant, weights, num_classes=num_classes, seed=seed, softmax=softmax)
    opts = ExportOptions(opset=opset, batch=batch, fp16=fp16, simplify=not no_simplify, check=not no_check,
                         tolerance_overrides=overrides)
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
@click.option("--calib-dataset", default="digits", show_default=True, help="INT8 calibration data (see alexnet-calibrate).")
@click.option("--calib-images", type=click.IntRange(min=1), default=512, show_default=True)
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

    opts = TrtBuildOptions(precision, library, min_batch, opt_batch, max_batch, workspace_mb, timing_cache, dla_core,
                           version_compatible, hardware_compatibility, compute_capability, calib_dataset, calib_images,
                           calib_cache, calib_algorithm, force_cache)
    build_engine(model, output, opts, echo=click.echo)


@export_group.command("triton")
@click.argument("model", type=click.Path())
@click.option("--repo", type=click.Path(file_okay=False), required=True, help="Model repository folder.")
@click.option("--name", default="alexnet", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True)
@click.option("--preferred-batch", default="", help="Comma-separated preferred batch sizes.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@_handle_errors
def export_triton_cmd(model, repo, name, max_batch, instances, kind, preferred_batch, max_queue_delay_us):
    """Write a Triton Inference Server model repository (config.pbtxt, labels, model in version 1)."""
    from alexnet_deploy.server.triton import export_triton

    root = export_triton(model, repo, name=name, max_batch=max_batch, instances=instances, kind=kind,
                         preferred=list(_int_list(preferred_batch)), max_queue_delay_us=max_queue_delay_us)
    click.echo(f"wrote {root}/config.pbtxt and {root}/1/; serve with: tritonserver --model-repository {repo}")


# ------------------------------------------------------------------------------------------- predict
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--engine", default=None, help="torch | torch-cuda | ort | ort-cuda | ort-trt | trt (default: from MODEL).")
@click.option("--variant", default=None, help="Variant defaults for a model without alexnet-deploy metadata.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@_handle_errors
def predict_cmd(model, images, top_k, engine, variant, batch_size, as_json, rebuild_if_stale):
    """Classify images (files or folders) with a checkpoint, an ONNX model or an engine."""
    _setup_logging()
    from tqdm import tqdm

    from alexnet_deploy.runtime.postprocess import to_probabilities, topk
    from alexnet_deploy.runtime.preprocess import find_images, load_image, preprocess_batch
    from alexnet_deploy.runtime.runners.factory import open_runner

    files = find_images(images)
    runner = open_runner(model, engine, variant=variant, rebuild_if_stale=rebuild_if_stale)
    meta = runner.metadata
    results = []
    with runner:
        step = min(batch_size, runner.max_batch or batch_size)
        for i in tqdm(range(0, len(files), step), disable=len(files) <= step, desc="predict", file=sys.stderr):
            chunk = files[i: i + step]
            x = preprocess_batch([load_image(f) for f in chunk], meta.preprocessing)
            probs = to_probabilities(runner.infer_batches(x, step), meta.output_kind)
            results += [{"image": f, "top": t} for f, t in zip(chunk, topk(probs, top_k, meta.class_names))]
    if as_json:
        click.echo(json.dumps({"model": str(model), "engine": runner.describe(), "results": results}, indent=2))
        return
    for r in results:
        best = r["top"][0]
        rest = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"][1:])
        click.echo(f"{r['image']}: {best['label']} ({best['probability']:.3f})" + (f"  [{rest}]" if rest else ""))


# -------------------------------------------------------------------------------------------- parity
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("candidate", type=click.Path())
@click.option("--engine", default=None, help="Engine for CANDIDATE (default: from its suffix).")
@click.option("--reference", default=None,
              help="PyTorch FP32 reference weights (default: the weights recorded in the candidate's metadata).")
@click.option("--variant", default=None, help="Variant defaults for a candidate without metadata.")
@click.option("--dataset", default="digits", show_default=True,
              help="Labelled set: digits | CIFAR-10 folder | ImageFolder tree | none.")
@click.option("--num-images", type=click.IntRange(min=1), default=360, show_default=True,
              help="Images from the held-out split (class-balanced, deterministic).")
@click.option("--random-samples", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="Which default gates apply (auto: the candidate's precision).")
@click.option("--tol", multiple=True, metavar="NAME=VALUE", help="Override a gate, e.g. min_top1_agreement=0.98.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None)
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@_handle_errors
def parity_cmd(candidate, engine, reference, variant, dataset, num_images, random_samples, precision, tol,
               json_path, junit_path, rebuild_if_stale):
    """Compare a candidate model with the PyTorch FP32 reference; non-zero exit when a gate fails."""
    _setup_logging()
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable
    from alexnet_deploy.parity.api import check_parity
    from alexnet_deploy.parity.tolerances import parse_overrides

    for p in (json_path, junit_path):
        if p:
            check_writable(p)
    report = check_parity(candidate, engine=engine, reference=reference, variant=variant,
                          dataset=None if dataset == "none" else dataset, num_images=num_images,
                          random_samples=random_samples, precision=precision,
                          rebuild_if_stale=rebuild_if_stale, **parse_overrides(tol))
    click.echo(report.table())
    if json_path:
        atomic_write_bytes(json_path, report.to_json().encode())
    if junit_path:
        atomic_write_bytes(junit_path, report.to_junit().encode())
    if not report.passed:
        click.echo(f"error: parity gate failed ({len(report.failures)} failing metric(s))", err=True)
        sys.exit(1)
    click.echo("parity: PASS")


# ----------------------------------------------------------------------------------------- calibrate
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


# --------------------------------------------------------------------------------------------- bench
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32") from None
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--engine", "engines", default="ort", show_default=True,
              help="Comma-separated: torch, torch-cuda, ort, ort-cuda, ort-trt, trt.")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--warmup-ms", type=float, default=200.0, show_default=True)
@click.option("--duration-s", type=float, default=3.0, show_default=True, help="Measured time per row.")
@click.option("--iterations", type=int, default=None, help="Measure this many runs per row instead of --duration-s.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (ORT and torch).")
@click.option("--baseline", default=None, help="Engine the 'x base' column compares with (default: the first).")
@click.option("--end-to-end-images", "images_dir", type=click.Path(), default=None,
              help="Also time decoding + preprocessing of the images in this folder.")
@click.option("--overhead-check", is_flag=True, help="Also time a bare session.run loop (harness overhead).")
@click.option("--no-roofline", is_flag=True, help="Skip the FLOP count and the CPU peak measurement.")
@click.option("--cuda-graph", is_flag=True, help="trt engine: replay captured CUDA graphs (fixed batch per row).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None)
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="PNG (needs matplotlib).")
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False), default=None,
              help="Baseline JSON of an earlier run: exit 1 when a row regressed.")
@click.option("--max-regression", default="10%", show_default=True)
@click.option("--server", default=None, help="Load-test a running v2 server instead (e.g. http://127.0.0.1:8000).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="With --server: concurrent clients.")
@click.option("--client-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --server: images per request.")
@_handle_errors
def bench_cmd(models, engines, batch_sizes, warmup_ms, duration_s, iterations, threads, baseline, images_dir,
              overhead_check, no_roofline, cuda_graph, json_path, csv_path, md_path, plot_path, compare_path,
              max_regression, server, concurrency, client_batch):
    """Benchmark models on several engines and batch sizes: latency percentiles, throughput, ratios.

    With --server URL, drive a running alexnet-serve / Triton / KServe v2 endpoint instead."""
    _setup_logging()
    from alexnet_deploy.benchmarks import report
    from alexnet_deploy.benchmarks.harness import BenchConfig
    from alexnet_deploy.benchmarks.run import run_bench
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable

    if server:
        from alexnet_deploy.server.loadgen import run_load

        if json_path:
            check_writable(json_path)
        result = run_load(server, list(_int_list(concurrency)), duration_s, batch=client_batch, echo=click.echo)
        if json_path:
            atomic_write_bytes(json_path, json.dumps(result, indent=2).encode())
        return
    if not models:
        raise UserInputError("give at least one model (ONNX, engine or checkpoint)")
    for p in (json_path, csv_path, md_path, plot_path):
        if p:
            check_writable(p)
    baseline_json = None
    if compare_path:
        try:
            baseline_json = json.loads(Path(compare_path).read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"cannot read --compare {compare_path}: {exc}") from None
    max_reg = report.parse_percent(max_regression)
    cfg = BenchConfig(_int_list(batch_sizes), warmup_ms, None if iterations else duration_s, iterations)
    result = run_bench(list(models), [e.strip() for e in engines.split(",") if e.strip()], cfg, threads=threads,
                       baseline_engine=baseline, images_dir=images_dir, overhead_check=overhead_check,
                       roofline=not no_roofline, cuda_graph=cuda_graph, echo=click.echo).to_dict()
    failures = report.compare(result, baseline_json, max_reg) if baseline_json else []
    click.echo(report.table(result))
    if json_path:
        atomic_write_bytes(json_path, report.to_json(result).encode())
    if csv_path:
        atomic_write_bytes(csv_path, report.to_csv(result).encode())
    if md_path:
        atomic_write_bytes(md_path, report.to_markdown(result).encode())
    if plot_path:
        report.plot(result, plot_path)
    if failures:
        for f in failures:
            click.echo(f"REGRESSION {f}")
        click.echo(f"error: {len(failures)} row(s) slower than {compare_path} beyond {max_regression} + noise", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------------------------- serve
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("--engine", default=None, help="ort (default for .onnx) | ort-cuda | ort-trt | trt | torch.")
@click.option("--name", default="alexnet", show_default=True, help="Model name in the v2 URLs.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True, help="Queued images before 503.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True)
@click.option("--timeout-s", type=click.FloatRange(min=0.01), default=10.0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--variant", default=None, help="Variant defaults for a model without metadata.")
@_handle_errors
def serve_cmd(model, engine, name, host, port, max_batch, max_queue_delay_ms, max_queue, max_body_mb, timeout_s,
              threads, variant):
    """Serve a model over the Open Inference Protocol v2 (KServe / Triton compatible) with dynamic batching."""
    _setup_logging()
    from alexnet_deploy.deps import require

    for mod in ("fastapi", "uvicorn", "prometheus_client"):
        require(mod)
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.server.app import ServeOptions, serve

    runner = open_runner(model, engine, variant=variant, threads=threads)
    click.echo(f"serving {model} as {name!r} on http://{host}:{port} ({runner.engine}, max batch {max_batch}, "
               f"queue delay {max_queue_delay_ms} ms)")
    serve(runner, ServeOptions(name, "1", max_batch, max_queue_delay_ms, max_queue, max_body_mb, timeout_s), host, port)


# ---------------------------------------------------------------------------------------------- demo
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workdir", type=click.Path(file_okay=False), default="artifacts/demo", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even when a cached checkpoint exists.")
@_handle_errors
def demo_cmd(workdir, retrain):
    """The main job: train (or reuse) cifar10 on the embedded digits, export FP32 + FP16 ONNX, check parity."""
    _setup_logging()
    from alexnet_deploy.demo import run_demo

    run_demo(Path(workdir), retrain=retrain, echo=click.echo)



train_main = train_cmd
export_main = export_group
predict_main = predict_cmd
parity_main = parity_cmd
demo_main = demo_cmd
calibrate_main = calibrate_cmd
bench_main = bench_cmd
serve_main = serve_cmd
