"""`alexnet-serve` command."""
from __future__ import annotations

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)


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
