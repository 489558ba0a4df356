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
    report = check_parity(candidate, engine=engine, reference=reference, variant=variant,
                          dataset=None if dataset == "none" else (dataset or "auto"), num_images=num_images,
                          random_samples=random_samples, precision=precision,
                          rebuild_if_stale=rebuild_if_stale, preprocess=preprocess, **parse_overrides(tol))
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
