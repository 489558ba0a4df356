"""`alexnet-demo` command."""
from __future__ import annotations

from pathlib import Path

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workdir", type=click.Path(file_okay=False), default="artifacts/demo", show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even when a cached checkpoint exists.")
@_handle_errors
def demo_cmd(workdir, retrain):
    """The main job: train (or reuse) cifar10 on the embedded digits, export FP32 + FP16 ONNX, check parity."""
    _setup_logging()
    from alexnet_deploy.demo import run_demo

    run_demo(Path(workdir), retrain=retrain, echo=click.echo)
