"""`alexnet-export kserve`: KServe InferenceServices and a plain Kubernetes Deployment for what alexnet-deploy built
(alexnet_deploy/exporter/kserve.py)."""
from __future__ import annotations

import click

from alexnet_deploy.cli.common import _handle_errors, _setup_logging


@click.command("kserve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(), metavar="MODEL_OR_DEPLOY_DIR")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder to write the YAML files into.")
@click.option("--name", default=None,
              help="Model name alexnet-serve announces (default: the name alexnet-deploy's Triton repository gives it, "
                   "as alexnet-serve --name auto does: alexnet-fp32, ...); resource names derive from it.")
@click.option("--image", default=None,
              help="alexnet-serve container image (default: alexnet-deploy/serve:VERSION-cpu, or -gpu; built from "
                   "deploy/docker/Dockerfile.cpu / .gpu).")
@click.option("--storage-uri", default=None,
              help="Where MODEL_OR_DEPLOY_DIR's folder is uploaded (the deployment folder, the Triton repository, or "
                   "the folder holding the model): s3://..., gs://..., pvc://CLAIM/PATH. Without it the files carry a "
                   "marked placeholder.")
@click.option("--namespace", default=None, help="Kubernetes namespace of every object (default: none, kubectl's).")
@click.option("--gpu/--cpu", "gpu", default=None,
              help="GPU limits (nvidia.com/gpu: 1) and the -gpu image (default: GPU when the input holds TensorRT "
                   "engines or KIND_GPU Triton models).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--only", type=click.Choice(["serve", "triton"]), default=None,
              help="serve: only alexnet-serve's InferenceServices and Deployment; triton: only the Triton "
                   "InferenceService (default: everything the input has).")
@click.option("--artifact", default=None,
              help="What alexnet-serve runs: an artifact of the deployment folder (default onnx-fp32) or a model of "
                   "the Triton repository (default alexnet-fp32).")
@click.option("--runtime-version", default=None,
              help="Triton image tag KServe runs (default: 24.08-py3); for TensorRT plans it must ship the TensorRT "
                   "they were built with.")
@_handle_errors
def export_kserve_cmd(model, out_dir, name, image, storage_uri, namespace, gpu, replicas, only, artifact,
                      runtime_version):
    """KServe InferenceServices (Triton predictor; alexnet-serve as a custom predictor) and a plain Kubernetes
    Deployment + Service for a deployment folder, a Triton repository, an artifact folder or a model file."""
    _setup_logging()
    from alexnet_deploy.exporter.kserve import (
        PLACEHOLDER,
        TRITON_RUNTIME_VERSION,
        KServeOptions,
        export_kserve,
    )

    opts = KServeOptions(name=name, image=image, storage_uri=storage_uri, namespace=namespace, gpu=gpu,
                         replicas=replicas, only=only, artifact=artifact,
                         runtime_version=runtime_version or TRITON_RUNTIME_VERSION)
    result = export_kserve(model, out_dir, opts)
    for key, path in result.files.items():
        where = {"triton": "KServe, Triton predictor", "serve": "KServe, alexnet-serve custom predictor",
                 "deployment": "Kubernetes without KServe"}[key]
        gpu_text = "GPU" if result.gpu.get("serve" if key == "deployment" else key) else "CPU"
        click.echo(f"wrote {path} ({where}, {gpu_text})")
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.placeholder:
        click.echo(f"storageUri is a placeholder ({PLACEHOLDER}/...): rerun with --storage-uri where the folder is "
                   "uploaded (s3://..., gs://..., pvc://CLAIM/PATH), or edit the files")
