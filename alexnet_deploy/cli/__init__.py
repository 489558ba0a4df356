"""Command-line entry points (click). Thin: each command parses options and calls one stage module.

One module per command (``cli/<command>.py``); shared error handling and options live in ``cli/common.py``.
Every ``AlexnetDeployError`` becomes one line on stderr and a non-zero exit; heavy imports happen inside
the commands so ``--help`` works without torch, onnxruntime or any optional dependency.
"""
from alexnet_deploy.cli.bench import bench_cmd as bench_main
from alexnet_deploy.cli.calibrate import calibrate_cmd as calibrate_main
from alexnet_deploy.cli.demo import demo_cmd as demo_main
from alexnet_deploy.cli.deploy import deploy_cmd as deploy_main
from alexnet_deploy.cli.export import export_group as export_main
from alexnet_deploy.cli.parity import parity_cmd as parity_main
from alexnet_deploy.cli.predict import predict_cmd as predict_main
from alexnet_deploy.cli.serve import serve_cmd as serve_main
from alexnet_deploy.cli.stream import stream_cmd as stream_main
from alexnet_deploy.cli.train import train_cmd as train_main
from alexnet_deploy.cli.verify import verify_cmd as verify_main

__all__ = ["bench_main", "calibrate_main", "demo_main", "deploy_main", "export_main", "parity_main", "predict_main",
           "serve_main", "stream_main", "train_main", "verify_main"]
