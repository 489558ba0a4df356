"""`alexnet-demo` command: `alexnet-deploy` on the digits-trained cifar10 model."""
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
@click.option("--force", is_flag=True, help="Redo every deployment step (they are reused when up to date).")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def demo_cmd(workdir, retrain, force):
    """The main job: train (or reuse) cifar10 on the embedded digits, then alexnet-deploy it: ONNX FP32/FP16/INT8,
    TensorRT engine builds, a Triton repository, parity against PyTorch, benchmarks and an HTML report."""
    _setup_logging()
    from alexnet_deploy.cli.deploy import finish
    from alexnet_deploy.demo import DEPLOY_FOLDER, run_demo

    report = run_demo(Path(workdir), retrain=retrain, echo=click.echo, force=force)
    click.echo(f"\ndemo done in {report['demo_seconds']:.1f} s (alexnet-deploy steps {report['seconds']:.1f} s); "
               f"re-running reuses every step that is up to date")
    finish(report, Path(workdir) / DEPLOY_FOLDER)
