"""`alexnet-verify` command: a deployment folder checks itself on the target (torch-free, dataset-free)."""
from __future__ import annotations

import sys

import click

from alexnet_deploy.cli.common import _handle_errors, _setup_logging
from alexnet_deploy.runtime.engines import EXPORTED_ENGINES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target", type=click.Path())
@click.option("--engine", type=click.Choice(list(EXPORTED_ENGINES)), default=None,
              help="Run only the artifacts this engine runs, on it (default: ort for ONNX, trt for engines; an "
                   "engine this machine lacks is reported as skipped).")
@click.option("--tol", multiple=True, metavar="NAME=VALUE",
              help="Override a gate the golden set carries, e.g. min_top1_agreement=0.98.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None, help="Write a JUnit XML report.")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def verify_cmd(target, engine, tol, json_path, junit_path):
    """Verify TARGET (a deployment folder written by alexnet-deploy, one artifact folder in it, or one model file
    of an artifact) on this machine against the folder's golden set: every file must still match the sha256
    alexnet-deploy recorded, and every model's outputs must pass the golden set's parity gates (accuracy drop,
    top-1 agreement, cosine, ... vs the PyTorch FP32 reference). Exit 0 only when every gate passes, 1 when one
    fails (or a file was changed), 2 on bad input."""
    _setup_logging()
    from pathlib import Path

    from alexnet_deploy.fileio import atomic_write_bytes, check_writable, refuse_overlapping_paths
    from alexnet_deploy.parity.tolerances import parse_overrides
    from alexnet_deploy.parity.verify import resolve_target, verify

    overrides = parse_overrides(tol)
    folder, _, _ = resolve_target(target)
    refuse_overlapping_paths(inputs={"TARGET": target}, outputs={"--json": json_path, "--junit": junit_path})
    for p in (json_path, junit_path):
        if p and _inside(Path(p), folder):  # a file written into DIR would change what the next verify reads
            raise _user_error(f"{p} is inside the deployment folder {folder}; write reports elsewhere")
    for p in (json_path, junit_path):
        if p:
            check_writable(p)
    result = verify(target, engine=engine, tolerances=overrides)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(result.table())
    if json_path:
        atomic_write_bytes(json_path, result.to_json().encode())
    if junit_path:
        atomic_write_bytes(junit_path, result.to_junit().encode())
    if not result.passed:
        fails = result.failures
        click.echo(f"error: verify FAILED: {fails[0]}" + (f" (and {len(fails) - 1} more)" if len(fails) > 1 else ""),
                   err=True)
        sys.exit(1)
    ran = sum(r.status == "pass" for r in result.rows)
    click.echo(f"verify: PASS ({ran} artifact(s) on this machine)")


def _inside(p, folder) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _user_error(msg: str):
    from alexnet_deploy.errors import UserInputError

    return UserInputError(msg)
