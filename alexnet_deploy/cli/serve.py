"""`alexnet-serve` command."""
from __future__ import annotations

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _setup_logging,
)
from alexnet_deploy.runtime.preprocess import DEFAULT_MAX_PIXELS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(), metavar="MODEL|ARTIFACT_DIR")
@click.option("--engine", default=None, help="ort (default for .onnx) | ort-cuda | ort-trt | trt | torch.")
@click.option("--name", "--model-name", "name", default="alexnet", show_default=True,
              help="Model name in the v2 URLs and gRPC calls; 'auto': the name alexnet-deploy's Triton repository "
                   "gives this artifact (alexnet-fp32, alexnet-fp16, alexnet-int8; alexnet-trt-<precision> for "
                   "an engine).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: a free one, printed in the serving line).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve KServe v2 / Triton gRPC on this port of --host (off unless given; 0: a free one).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True, help="Queued images before 503.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True)
@click.option("--timeout-s", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Inference deadline per request (504).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image (width x height, read from its header before decoding) /classify accepts (413).")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Open connections before new ones may only ask for /v2/health/* (503 otherwise).")
@click.option("--header-timeout-s", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Deadline for a request's head (slow clients get 408 and are disconnected).")
@click.option("--body-timeout-s", type=click.FloatRange(min=0.01), default=30.0, show_default=True,
              help="Deadline for a request's body once its head arrived (408).")
@click.option("--decode-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads that parse request JSON and decode images (off the event loop).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log a line per HTTP request (uvicorn's access log). Off by default: at a thousand small "
                   "requests a second it costs ~7% of the event loop; /metrics counts every request and "
                   "internal errors are logged either way.")
@click.option("--http-parser", type=click.Choice(["auto", "httptools", "h11"]), default="auto", show_default=True,
              help="HTTP/1.1 request parser: httptools (llhttp, C; auto when installed) or h11 (pure Python). Both "
                   "enforce the same deadlines and limits.")
@click.option("--loop", "loop", type=click.Choice(["auto", "uvloop", "asyncio"]), default="auto", show_default=True,
              help="Event loop: uvloop (libuv; auto when installed) or asyncio's own.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--variant", default=None, help="Variant defaults for a model without metadata.")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def serve_cmd(model, engine, name, host, port, grpc_port, max_batch, max_queue_delay_ms, max_queue, max_body_mb, timeout_s,
              max_pixels, max_connections, header_timeout_s, body_timeout_s, decode_workers, access_log, http_parser,
              loop, threads, variant):
    """Serve a model over the Open Inference Protocol v2 (KServe / Triton compatible) with dynamic batching."""
    _setup_logging()
    from alexnet_deploy.deps import require

    for mod in ("fastapi", "uvicorn", "prometheus_client", *(("httptools",) if http_parser == "httptools" else ()),
                *(("uvloop",) if loop == "uvloop" else ())):
        require(mod)
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.server.app import ServeOptions, bind_socket, serve

    from alexnet_deploy.errors import UserInputError

    model = artifact_model(model)
    grpc_sock = None
    if grpc_port is not None:
        from alexnet_deploy.errors import MissingDependencyError

        try:
            import google.protobuf  # noqa: F401
            import grpc  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "grpc", "'alexnet-deploy[serve]'", "alexnet-serve --grpc-port") from None
        from alexnet_deploy.server.grpc_service import reserve_port
    sock = bind_socket(host, port)  # before loading the model: a busy port is a one-line error at once
    try:
        if grpc_port is not None:
            grpc_sock = reserve_port(host, grpc_port)
        from alexnet_deploy.runtime.runners.factory import model_kind

        # ONNX Runtime's intra-op threads spin-wait after each batch by default: on a small host that burnt most of
        # a core the event loop needed (2-core Zen 3, 32x32 model, c16-c64: 1.25x the throughput without it)
        try:
            is_onnx = model_kind(model) == "onnx"
        except UserInputError:  # open_runner says what is wrong with the path, in its order
            is_onnx = False
        ort_options = {"session_config": {"session.intra_op.allow_spinning": "0"}} if is_onnx else {}
        runner = open_runner(model, engine, variant=variant, threads=threads, **ort_options)
        # open, check and run the model once before announcing the address: a model the runners refuse is one
        # line and exit 2 here, not a uvicorn startup traceback after "serving ... on http://..."
        import numpy as np

        runner.activate()
        n = runner.min_batch or 1
        runner.infer(np.zeros((n, *runner.metadata.input_dims), runner.metadata.input_dtype))
        port = sock.getsockname()[1]
        from alexnet_deploy.exporter.triton import check_model_name, onnx_model_name, plan_model_name

        if name == "auto":  # the name alexnet-deploy's triton/ repository gives this artifact
            is_plan = str(model).lower().endswith((".plan", ".engine")) or runner.engine == "trt"
            name = (plan_model_name if is_plan else onnx_model_name)(runner.metadata.precision)

        check_model_name(name)
        grpc_url = f" and grpc://{host}:{grpc_sock.getsockname()[1]}" if grpc_sock is not None else ""
        click.echo(f"serving {model} as {name!r} on http://{host}:{port}{grpc_url} ({runner.engine}, max batch {max_batch}, "
                   f"queue delay {max_queue_delay_ms} ms)")
        opts = ServeOptions(name, "1", max_batch, max_queue_delay_ms, max_queue, max_body_mb, timeout_s,
                            max_pixels=max_pixels, max_connections=max_connections, header_timeout_s=header_timeout_s,
                            body_timeout_s=body_timeout_s, decode_workers=decode_workers, access_log=access_log,
                            http_parser=http_parser, loop=loop)
        if grpc_sock is None:
            serve(runner, opts, host, port, sock=sock)
        else:  # the same app, batcher and limits; gRPC starts once the model is warm and stops before the drain
            import uvicorn

            from alexnet_deploy.server.app import create_app, server_config
            from alexnet_deploy.server.grpc_service import attach_grpc

            app = create_app(runner, opts)
            attach_grpc(app, runner, name, opts.version, host, grpc_sock.getsockname()[1],
                        max_message_bytes=int(max_body_mb * 1024 * 1024), max_concurrent_rpcs=max_connections,
                        reserved=grpc_sock)
            uvicorn.Server(server_config(app, opts)).run(sockets=[sock])
    finally:
        sock.close()
        if grpc_sock is not None:
            grpc_sock.close()


def artifact_model(model: str) -> str:
    """``alexnet-serve DIR``: an artifact folder of alexnet-deploy serves the model its manifest.json names; a
    deployment folder (several artifacts) is one line naming them."""
    import json
    from pathlib import Path

    from alexnet_deploy.errors import UserInputError

    folder = Path(model)
    if not folder.is_dir():
        return model

    def manifest(d: Path) -> dict | None:
        try:
            data = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and str(data.get("schema", "")).startswith("alexnet-deploy.artifact") else None

    m = manifest(folder)
    if m is not None:
        rel = m.get("model")
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise UserInputError(f"{folder / 'manifest.json'} names no model file inside the folder")
        path = folder / rel
        if not path.is_file():
            raise UserInputError(f"{folder / 'manifest.json'} names {rel}, which is missing from {folder}")
        return str(path)
    arts = sorted(d.name for d in folder.iterdir() if d.is_dir() and manifest(d) is not None)
    if arts:
        raise UserInputError(f"{folder} is a deployment folder with {len(arts)} artifacts; serve one of them, e.g. "
                             f"alexnet-serve {folder / arts[0]} ({', '.join(arts)})")
    raise UserInputError(f"{folder} is a folder, not a model, an artifact folder (manifest.json) or a deployment folder")
