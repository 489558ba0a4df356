"""`alexnet-parity` command."""
from __future__ import annotations

import sys

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("candidate", type=click.Path())
@click.option("--engine", default=None, help="Engine for CANDIDATE (default: from its suffix).")
@click.option("--golden", "golden", type=click.Path(), default=None,
              help="Check against a deployment folder's golden set (DIR/golden: inputs, labels, PyTorch outputs and "
                   "gates) instead of running PyTorch: no torch and no dataset needed (e.g. an engine built on the device).")
@click.option("--reference", default=None,
              help="PyTorch FP32 reference weights (default: the weights recorded in the candidate's metadata).")
@click.option("--variant", default=None, help="Variant defaults for a candidate without metadata.")
@click.option("--dataset", default=None,
              help="Labelled set: digits | CIFAR-10 folder | ImageFolder tree | none "
                   "(default: the training dataset recorded in the model; digits for digit classes).")
@click.option("--num-images", type=click.IntRange(min=1), default=360, show_default=True,
              help="Images from the held-out split (class-balanced, deterministic).")
@click.option("--random-samples", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="Which default gates apply (auto: the candidate's precision).")
@click.option("--tol", multiple=True, metavar="NAME=VALUE", help="Override a gate, e.g. min_top1_agreement=0.98.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None)
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@click.option("--preprocess", type=click.Choice(["default", "stretch"]), default="default", show_default=True,
              help="stretch: also run the dataset resized to the input size without the center crop, as DeepStream "
                   "and jetson-inference do, and report the accuracy change.")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def parity_cmd(candidate, engine, golden, reference, variant, dataset, num_images, random_samples, precision, tol,
               json_path, junit_path, rebuild_if_stale, preprocess):
    """Compare a candidate model with the PyTorch FP32 reference; non-zero exit when a gate fails."""
    _setup_logging()
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable, refuse_overlapping_paths
    from alexnet_deploy.parity.api import check_parity
    from alexnet_deploy.parity.tolerances import parse_overrides

    refuse_overlapping_paths(inputs={"the candidate": candidate, "--reference": reference},
                             outputs={"--json": json_path, "--junit": junit_path})
    for p in (json_path, junit_path):
        if p:
            check_writable(p)
    if golden is not None:
        from alexnet_deploy.errors import UserInputError

        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("reference", "variant", "dataset", "num_images", "random_samples",
                                                       "preprocess", "rebuild_if_stale")
                 if ctx.get_parameter_source(n) is not None and ctx.get_parameter_source(n).name != "DEFAULT"]
        if given:
            raise UserInputError(f"--golden brings its own inputs and reference outputs; drop {', '.join(given)}")
        from alexnet_deploy.parity.verify import check_with_golden

        report = check_with_golden(candidate, golden, engine=engine,
                                   precision=None if precision == "auto" else precision, tolerances=parse_overrides(tol))
        _finish(report, json_path, junit_path, preprocess)
        return
    # imported Keras models: Keras' own outputs (an explicit --dataset asks for the PyTorch reference instead)
    keras_golden = _keras_reference(candidate, reference) if dataset is None else None
    if keras_golden is not None:
        from alexnet_deploy.parity.verify import check_with_golden

        report = check_with_golden(candidate, keras_golden, engine=engine,
                                   precision=None if precision == "auto" else precision, tolerances=parse_overrides(tol))
        report.reference = f"Keras' own outputs ({keras_golden})"
        _finish(report, json_path, junit_path, preprocess)
        return
    adopted = _adopted_source(candidate) if reference is None else None
    if adopted is not None:  # an ONNX model from elsewhere: against its own outputs (the original file, ORT CPU)
        report = _parity_against_onnx(candidate, adopted, engine, dataset, num_images, random_samples, precision,
                                      parse_overrides(tol), preprocess)
        _finish(report, json_path, junit_path, preprocess)
        return
    from alexnet_deploy.exporter.rebuild import rebuild_engine  # the builder a stale engine is rebuilt with

    report = check_parity(candidate, engine=engine, reference=reference, variant=variant,
                          dataset=None if dataset == "none" else (dataset or "auto"), num_images=num_images,
                          random_samples=random_samples, precision=precision,
                          rebuild_if_stale=rebuild_if_stale, rebuild=rebuild_engine if rebuild_if_stale else None,
                          preprocess=preprocess, **parse_overrides(tol))
    _finish(report, json_path, junit_path, preprocess)


def _finish(report, json_path, junit_path, preprocess) -> None:
    from alexnet_deploy.fileio import atomic_write_bytes

    click.echo(report.table())
    if preprocess != "default":
        from alexnet_deploy.parity.sets import resize_effect

        click.echo(resize_effect(report, preprocess))
    if json_path:
        atomic_write_bytes(json_path, report.to_json().encode())
    if junit_path:
        atomic_write_bytes(junit_path, report.to_junit().encode())
    if not report.passed:
        click.echo(f"error: parity gate failed ({len(report.failures)} failing metric(s))", err=True)
        sys.exit(1)
    click.echo("parity: PASS")


def _candidate_meta(candidate):
    if not str(candidate).lower().endswith(".onnx"):
        return None
    from alexnet_deploy.errors import AlexnetDeployError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    try:
        return read_onnx_metadata(candidate)
    except AlexnetDeployError:
        return None  # check_parity reports it


def _keras_reference(candidate, reference):
    """The Keras reference folder: next to ``--reference MODEL.keras``, or recorded in the candidate's metadata."""
    import os

    from alexnet_deploy.errors import UserInputError

    if reference is not None:
        from alexnet_deploy.models.keras_h5 import is_keras_file
        from alexnet_deploy.parity.keras_reference import default_reference_dir

        if is_keras_file(reference):
            folder = default_reference_dir(reference)
            if folder.is_dir():
                return folder
            click.echo(f"note: no Keras outputs next to {reference} (alexnet-export keras-reference writes them); "
                       "the reference is its PyTorch port")
        return None
    meta = _candidate_meta(candidate)
    rec = (meta.extra.get("keras_reference") if meta is not None else None) or None
    if not isinstance(rec, dict):
        return None
    here = os.path.dirname(os.path.realpath(candidate))
    for p in (os.path.join(here, str(rec.get("path", ""))), rec.get("absolute")):
        if p and os.path.isdir(p):
            return p
    raise UserInputError(f"{candidate} was gated against Keras' outputs in {rec.get('path')}, which is not here; "
                         "copy that folder next to the model or pass --reference MODEL.keras")


def _adopted_source(candidate):
    import os

    meta = _candidate_meta(candidate)
    if meta is None or "adopted_from" not in meta.extra:
        return None
    from alexnet_deploy.errors import ModelLoadError
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.parity.run import _candidate_paths

    found = [p for p in _candidate_paths(meta, candidate, None) if os.path.isfile(p)]
    for p in found:
        if not meta.source_sha256 or sha256_file(p) == meta.source_sha256:
            return p
    raise ModelLoadError(f"the original ONNX model {meta.source_weights!r} recorded in {candidate} is "
                         + ("changed (sha256 differs)" if found else "not here") + "; parity compares with it")


class _LayoutAdapter:
    """A reference runner fed what parity feeds references (normalized float NCHW) for a model that takes
    another layout of the same values (float-nhwc)."""

    def __init__(self, runner):
        self.runner, self.metadata = runner, runner.metadata

    def describe(self) -> str:
        return self.runner.describe()

    def infer_batches(self, x, batch_size):
        import numpy as np

        if self.metadata.input_format == "float-nhwc":
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        return self.runner.infer_batches(x, batch_size)


def _parity_against_onnx(candidate, source, engine, dataset, num_images, random_samples, precision, tol, preprocess):
    from alexnet_deploy.runtime.machine import machine_info
    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.fileio import printable_path
    from alexnet_deploy.parity.run import run_parity
    from alexnet_deploy.parity.sets import parity_sets
    from alexnet_deploy.parity.tolerances import tolerances_for
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    runner = open_runner(candidate, engine)
    meta = runner.metadata
    ref_meta = read_onnx_metadata(candidate)  # the original takes what the adopted FP32 model took
    if ref_meta.input_format not in ("float-nchw", "float-nhwc"):
        raise UserInputError(f"parity against the original ONNX needs a normalized-float input, not "
                             f"{ref_meta.input_format}; pass --reference")
    prec = meta.precision if precision == "auto" else precision
    sets = parity_sets(meta, None if dataset == "none" else (dataset or "auto"), num_images, random_samples,
                       resize=preprocess)
    with runner, OrtRunner(source, ref_meta) as ref:
        report = run_parity(runner, _LayoutAdapter(ref), sets, tolerances_for(prec, tol), prec)
    report.candidate = f"{printable_path(candidate)} [{runner.describe()}]"
    report.reference = f"its own outputs: {printable_path(source)} on ONNX Runtime CPU"
    report.machine = machine_info(None)
    return report
