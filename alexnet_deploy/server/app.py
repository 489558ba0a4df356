"""The HTTP server (FastAPI + uvicorn; this module is imported only by alexnet-serve): Open Inference Protocol v2 REST, an image convenience endpoint,
Prometheus metrics, dynamic batching, limits, warm-up before ready and graceful shutdown.

Nothing slow runs on the event loop: request JSON is parsed and images are decoded in a small worker pool
(pixel count checked from the header first), inference runs on the batcher's thread, so health and ready
answer while uploads are decoded. Every error is a JSON ``{"error": ...}`` naming what is wrong; every 503
carries ``Retry-After``. Connection-level limits (request deadlines, connection cap) are in ``connections``."""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet_deploy import __version__
from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.runtime.engines import GPU_ENGINES
from alexnet_deploy.runtime.preprocess import DEFAULT_MAX_PIXELS
from alexnet_deploy.server.batcher import DynamicBatcher, QueueFull
from alexnet_deploy.server.connections import ConnectionLimits
from alexnet_deploy.server.metrics import Metrics, MetricsMiddleware
from alexnet_deploy.server.protocol import (HEADER_LENGTH, INLINE_PARSE_BYTES, NP_TO_V2, ModelSpec, ProtocolError,
                                             build_infer_response, check_batch, check_model, decompress, header_int,
                                             prepare_infer_body)
from alexnet_deploy.exporter.triton import config_json as triton_config

PLATFORMS = {"ort": "onnxruntime_onnx", "trt": "tensorrt_plan", "torch": "pytorch_libtorch"}
log = logging.getLogger("alexnet_deploy.server")


@dataclass
class ServeOptions:
    name: str = "alexnet"
    version: str = "1"
    max_batch: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256
    max_body_mb: float = 16.0
    timeout_s: float = 10.0
    warmup: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_connections: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    decode_workers: int = 2
    jpeg_draft: bool = True  # decode large JPEG uploads at a reduced DCT scale (no smaller than the resize)
    retry_after_s: int = 1
    drain_idle_s: float = 2.0  # SIGTERM: idle keep-alive connections get this long to send a last request (503)
    access_log: bool = False  # uvicorn's line per request: ~7-8% of the event loop per small request at c64, off
    # by default like Triton's (/metrics counts every request; internal errors are logged either way)
    http_parser: str = "auto"  # connections.PARSERS: httptools (llhttp) when installed, else h11
    loop: str = "auto"  # LOOPS: uvloop when installed, else asyncio's own

    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(max_connections=self.max_connections, health_reserve=max(16, self.max_connections // 4),
                                header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                                retry_after_s=self.retry_after_s, drain_idle_s=self.drain_idle_s)


_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")


def _clean(message: str) -> str:
    """No object reprs, no unencodable characters, no overlong echoes of the request in an error body."""
    message = _REPR.sub("the upload", message).encode("utf-8", "replace").decode("utf-8")
    return message if len(message) <= 500 else message[:500] + "..."


def create_app(runner, options: ServeOptions | None = None):
    opts = options or ServeOptions()
    meta = runner.metadata
    metrics = Metrics()
    state = {"ready": False, "batcher": None, "pool": None}
    dims, dtype = tuple(meta.input_dims), np.dtype(meta.input_dtype)  # (H, W, 3) uint8 for uint8-nhwc models
    v2_type = NP_TO_V2[dtype]
    max_batch = min(opts.max_batch, runner.max_batch or opts.max_batch) if runner.max_batch else opts.max_batch
    spec = ModelSpec(opts.name, opts.version, meta.input_name, dims, dtype, meta.output_name, max_batch)
    body_limit = int(opts.max_body_mb * 1024 * 1024)
    retry = {"retry-after": str(opts.retry_after_s)}

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, runner.activate)
        state["pool"] = ThreadPoolExecutor(max_workers=max(1, opts.decode_workers), thread_name_prefix="decode")
        batcher = DynamicBatcher(runner, max_batch, opts.max_queue_delay_ms, opts.max_queue, metrics.on_batch)
        state["batcher"] = batcher
        batcher.start()
        if opts.warmup:
            for n in sorted({runner.min_batch or 1, max_batch}):
                await batcher.run_direct(np.zeros((n, *dims), dtype))
        state["ready"] = True
        # everything loaded so far (the model, FastAPI, numpy, onnxruntime) lives as long as the server: out of
        # the collector's sight, a full collection no longer walks it (50-56 ms pauses under load at c64 before,
        # one every ~2 s, a third of the p99 there; docs/benchmarks/serve-vs-triton-zen3.md)
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state["ready"] = False
            gc.unfreeze()  # what the server held may be collected again once it stops (an in-process server)
            await batcher.drain()
            state["pool"].shutdown(wait=False, cancel_futures=True)
            runner.deactivate()

    app = FastAPI(title="alexnet-deploy", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics

    def error(status: int, message: str, headers: dict | None = None, close: bool = False) -> Response:
        headers = dict(headers or {})
        if status == 503:
            headers.update(retry)
        if close:  # the body may be unread: this connection cannot carry another request
            headers["connection"] = "close"
        return JSONResponse({"error": _clean(message)}, status_code=status, headers=headers)

    async def read_body(request: Request) -> bytes:
        return await receive_body(request.headers.get("content-length"), request.receive)

    async def receive_body(declared: str | None, receive) -> bytes:
        """The request body from ASGI ``receive``, within --max-body-mb and --body-timeout-s. One timer per request
        (not a wait_for task per chunk: at high concurrency those tasks were a visible share of the event loop)."""
        if declared is not None and header_int(declared, "Content-Length") > body_limit:
            raise ProtocolError(f"request body of {declared} bytes exceeds the {body_limit}-byte limit (--max-body-mb)", 413, True)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired = []

        def expire():
            expired.append(True)
            task.cancel()

        timer = loop.call_later(opts.body_timeout_s, expire)
        chunks = []
        size = 0
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "http.disconnect":
                    raise ProtocolError("the client disconnected while sending the body", 400, True)
                if kind != "http.request":
                    continue
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > body_limit:
                        raise ProtocolError(f"request body exceeds the {body_limit}-byte limit (--max-body-mb)", 413, True)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: this cancellation is handled here
            if uncancel is not None:
                uncancel()
            raise ProtocolError(f"the request body did not arrive within {opts.body_timeout_s:g} s", 408, True) from None
        finally:
            timer.cancel()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def incoming():
        """A request on its way in: a forming batch waits for it (batcher.incoming; nothing before the lifespan)."""
        batcher = state["batcher"]
        return batcher.incoming() if batcher is not None else nullcontext()

    async def offload(fn, *args):
        """CPU work (JSON parsing, image decoding) in the worker pool, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(state["pool"], fn, *args)

    async def run(x: np.ndarray) -> np.ndarray:
        if not state["ready"]:
            raise ProtocolError("the model is not ready", 503)
        check_batch(x, spec)
        try:
            fut = state["batcher"].enqueue(x)
        except QueueFull as exc:
            raise ProtocolError(f"server busy: {exc}; retry later", 503) from None
        # the deadline is a timer on the request's future (no wait_for task per request); the batcher skips a
        # request whose future is already done
        timer = asyncio.get_running_loop().call_later(opts.timeout_s, _expire, fut)
        try:
            return await fut
        except _Expired:
            raise ProtocolError(f"inference did not finish within {opts.timeout_s} s", 504) from None
        except AlexnetDeployError as exc:
            raise ProtocolError(str(exc), 400) from None
        finally:
            timer.cancel()

    model_meta = {
        "name": opts.name, "versions": [opts.version], "platform": PLATFORMS.get(runner.engine.split("-")[0], runner.engine),
        "inputs": [{"name": meta.input_name, "datatype": v2_type, "shape": [-1, *dims]}],
        "outputs": [{"name": meta.output_name, "datatype": "FP32", "shape": [-1, meta.num_classes]}],
        "parameters": {"variant": meta.variant, "precision": meta.precision, "output_kind": meta.output_kind,
                       "max_batch_size": max_batch, "engine": runner.engine},
    }

    stats = metrics.stats
    config_json = triton_config(opts.name, meta, PLATFORMS.get(runner.engine.split("-")[0], runner.engine), max_batch,
                                opts.max_queue_delay_ms, "gpu" if runner.engine in GPU_ENGINES else "cpu")

    def decode(body: bytes) -> np.ndarray:
        from alexnet_deploy.runtime.preprocess import ImageTooLargeError, load_image, model_batch

        draft = (meta.preprocessing.resize, meta.preprocessing.resize) if opts.jpeg_draft else None
        try:
            img = load_image(body, max_pixels=opts.max_pixels, draft_size=draft, name="the upload")
        except ImageTooLargeError as exc:
            message = str(exc).replace("--max-pixels", "alexnet-serve --max-pixels")
            if "--max-pixels" not in message:
                message += f"; this server takes images up to {opts.max_pixels / 1e6:g} MP (alexnet-serve --max-pixels)"
            raise ProtocolError(message, 413) from None
        except UserInputError as exc:
            raise ProtocolError(str(exc)) from None
        return model_batch([img], meta)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        return error(exc.status, str(exc), close=exc.close)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.scope.get("route", "unmatched route"))
        return error(500, "internal error; the server log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state["ready"]:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": "the model is not ready"}, status_code=503, headers=retry)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "alexnet-deploy", "version": __version__,
                "extensions": ["binary_tensor_data", "classification", "model_configuration", "model_repository",
                               "statistics"]}

    @app.post("/v2/repository/index")
    async def repository_index():
        return [{"name": opts.name, "version": opts.version, "state": "READY" if state["ready"] else "UNAVAILABLE"}]

    @app.get("/v2/models/stats")
    async def all_model_stats():  # registered before /v2/models/{name}, which would take "stats" for a name
        return stats.json(opts.name, opts.version)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None):
        check_model(spec, name, version)
        return model_meta

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        check_model(spec, name, version)
        if state["ready"]:
            return {"name": name, "ready": True}
        return JSONResponse({"name": name, "ready": False, "error": "the model is not ready"}, status_code=503,
                            headers=retry)

    def parse_body(body: bytes, encoding: str | None, header_length: str | None):
        """Inflate a compressed body (limit applied after), parse and check the request."""
        t0 = time.perf_counter()
        req, x = prepare_infer_body(body, header_length, spec, encoding, body_limit)
        return req, x, time.perf_counter() - t0

    async def parse(body: bytes, encoding: str | None, header_length: str | None):
        """A small binary request (a few np.frombuffer calls) is parsed on the event loop: the hop to a pool thread
        and back cost more than the parse. JSON tensors, compressed and large bodies go to the worker pool."""
        if encoding is None and header_length is not None and len(body) <= INLINE_PARSE_BYTES:
            return parse_body(body, encoding, header_length)
        return await offload(parse_body, body, encoding, header_length)

    async def infer_v2(name: str, version: str | None, headers, receive) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer; ``headers``: a mapping of lower-case header names."""
        t0 = time.perf_counter()
        check_model(spec, name, version)
        try:
            with incoming():
                body = await receive_body(headers.get("content-length"), receive)
                req, x, input_s = await parse(body, headers.get("content-encoding"), headers.get(HEADER_LENGTH_LOWER))
            out = await run(x)
            t1 = time.perf_counter()
            body, rheaders = build_infer_response(name, opts.version, req, {meta.output_name: out}, meta.class_names)
        except ProtocolError:
            stats.on_request(False, time.perf_counter() - t0)
            raise
        t2 = time.perf_counter()
        stats.on_request(True, t2 - t0, input_s, t2 - t1)
        return Response(body, headers=rheaders, media_type=rheaders["content-type"])

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        return await infer_v2(name, version, request.headers, request.receive)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None):
        check_model(spec, name, version)
        return config_json

    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str, version: str | None = None):
        check_model(spec, name, version)
        return stats.json(opts.name, opts.version)

    @app.post("/models/{name}/classify")
    async def classify(name: str, request: Request, top_k: int = Query(5, ge=1)):
        from alexnet_deploy.runtime.postprocess import to_probabilities, topk

        check_model(spec, name, None)
        body = await read_body(request)
        if request.headers.get("content-encoding") is not None:
            body = await offload(decompress, body, request.headers["content-encoding"], body_limit)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            from starlette.formparsers import MultiPartException, MultiPartParser

            async def chunks():
                yield body
                yield b""

            try:
                form = await MultiPartParser(request.headers, chunks()).parse()
            except MultiPartException as exc:
                raise ProtocolError(f"malformed multipart upload: {exc}") from None
            try:
                files = [v for v in form.values() if hasattr(v, "read")]
                if not files:
                    raise ProtocolError("multipart upload without a file field (send the image as 'image')")
                body = await files[0].read()
            finally:
                await form.close()
        if not body:
            raise ProtocolError("empty upload; send image bytes or a multipart 'image' file")
        out = await run(await offload(decode, body))
        probs = to_probabilities(out, meta.output_kind)
        if not np.isfinite(probs).all():
            raise ProtocolError("the model's output for this image is not finite", 500)
        return {"model_name": name, "top": topk(probs, top_k, meta.class_names)[0]}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # the same checks, batcher, limits and statistics for the KServe v2 gRPC endpoint (server/grpc_service.py)
    app.state.v2 = {"state": state, "spec": spec, "run": run, "incoming": incoming, "model_meta": model_meta}
    route_names = frozenset(getattr(r, "name", "") for r in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, route_names=route_names)

    async def fast_infer(scope, receive, send, name: str, version: str | None) -> None:
        """The infer route without FastAPI's routing, dependency solving and exception middleware (a third of the
        event loop's time per small request at c64): the same function, errors, statistics and metrics."""
        t0 = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            response = await infer_v2(name, version, headers, receive)
        except ProtocolError as exc:
            response = error(exc.status, str(exc), close=exc.close)
        except Exception:  # noqa: BLE001 - logged; the client gets one line (as internal_error does)
            log.exception("internal error on POST %s", scope.get("path"))
            response = error(500, "internal error; the server log has the details")
        try:
            await response(scope, receive, send)
        finally:
            metrics.observe("infer", response.status_code, time.perf_counter() - t0)

    app.state.fast_infer = fast_infer  # server_config puts it in front of the whole FastAPI stack (asgi_app)
    return app


HEADER_LENGTH_LOWER = HEADER_LENGTH.lower()
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class _Expired(Exception):
    """The inference deadline (--timeout-s) passed before the request's batch finished."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class InferFastPath:
    """Pure ASGI: ``POST /v2/models/{name}[/versions/{v}]/infer`` goes straight to ``handler``; everything else
    (and the lifespan) to the FastAPI stack. The route stays registered there (route names, metrics labels; an
    in-process ASGI client that calls the FastAPI app directly gets the same answers through it). It wraps the
    FastAPI app from outside: inside it, Starlette's error middleware wrapped every send and FastAPI 0.165's body
    limit and telemetry middleware ran per request (a tenth of the event loop at c64)."""

    def __init__(self, app, handler):
        self.app = app
        self.handler = handler

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            m = _INFER_PATH.fullmatch(scope["path"])
            if m is not None:
                return await self.handler(scope, receive, send, m.group(1), m.group(2))
        return await self.app(scope, receive, send)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port is one line, not a uvicorn log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = str(exc.strerror or exc).split(" (while attempting")[0]
        hint = {errno.EADDRINUSE: " (another server is running there? choose another --port)",
                errno.EACCES: " (ports below 1024 need privileges; choose another --port)"}.get(exc.errno, "")
        raise UserInputError(f"cannot listen on {host}:{port}: {reason}{hint}") from None


def asgi_app(app):
    """The ASGI application uvicorn runs: ``create_app``'s FastAPI app behind the infer fast path."""
    handler = getattr(app.state, "fast_infer", None)
    return app if handler is None else InferFastPath(app, handler)


LOOPS = ("auto", "uvloop", "asyncio")


def event_loop(choice: str = "auto") -> str:
    """The event loop ``choice`` means here: auto is uvloop when it is installed, else asyncio's own."""
    if choice == "auto":
        import importlib.util

        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return choice


def server_config(app, options: ServeOptions, log_level: str = "info", **kwargs):
    """uvicorn settings with the connection guard (request deadlines, connection cap, head size, JSON protocol
    errors) on the request parser ``options.http_parser`` picks, on the event loop ``options.loop`` picks (named,
    so what runs is what alexnet-serve decided, not whatever uvicorn's own "auto" finds)."""
    import uvicorn

    from alexnet_deploy.server.connections import guarded_protocol

    limits = options.limits()
    kwargs.setdefault("loop", event_loop(options.loop))
    return uvicorn.Config(asgi_app(app), http=guarded_protocol(limits, options.http_parser), ws="none",
                          log_level=log_level, access_log=options.access_log,
                          timeout_graceful_shutdown=30, timeout_keep_alive=5,
                          h11_max_incomplete_event_size=limits.max_head_bytes, **kwargs)


def serve(runner, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          sock: socket.socket | None = None) -> None:
    import uvicorn

    sock = sock or bind_socket(host, port)
    uvicorn.Server(server_config(create_app(runner, options), options, log_level)).run(sockets=[sock])
