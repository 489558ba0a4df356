"""The HTTP server (FastAPI + uvicorn; this module is imported only by alexnet-serve): Open Inference Protocol v2 REST, an image convenience endpoint,
Prometheus metrics, dynamic batching, limits, warm-up before ready and graceful shutdown."""
from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet_deploy import __version__
from alexnet_deploy.errors import AlexnetDeployError
from alexnet_deploy.server.batcher import DynamicBatcher, QueueFull
from alexnet_deploy.server.protocol import HEADER_LENGTH, ProtocolError, build_infer_response, parse_infer_request

PLATFORMS = {"ort": "onnxruntime_onnx", "trt": "tensorrt_plan", "torch": "pytorch_libtorch"}


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


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("alexnet_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("alexnet_request_latency_seconds", "Request latency", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue = Histogram("alexnet_queue_seconds", "Time a request waited for its batch", registry=self.registry,
                               buckets=(.0001, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1))
        self.batch = Histogram("alexnet_batch_size", "Images per executed batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))

    def on_batch(self, images: int, waits: list[float]) -> None:
        self.batch.observe(images)
        for w in waits:
            self.queue.observe(w)


def create_app(runner, options: ServeOptions | None = None):
    opts = options or ServeOptions()
    meta = runner.metadata
    metrics = Metrics()
    state = {"ready": False, "batcher": None}
    c, h, w = meta.input_shape
    max_batch = min(opts.max_batch, runner.max_batch or opts.max_batch) if runner.max_batch else opts.max_batch

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, runner.activate)
        batcher = DynamicBatcher(runner, max_batch, opts.max_queue_delay_ms, opts.max_queue, metrics.on_batch)
        state["batcher"] = batcher
        batcher.start()
        if opts.warmup:
            for n in sorted({runner.min_batch or 1, max_batch}):
                await batcher.run_direct(np.zeros((n, c, h, w), np.float32))
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.drain()
            runner.deactivate()

    app = FastAPI(title="alexnet-deploy", version=__version__, lifespan=lifespan)
    app.state.metrics = metrics

    def error(status: int, message: str, endpoint: str):
        metrics.requests.labels(endpoint, str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    def check_model(name: str, version: str | None):
        if name != opts.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {opts.name!r}", 404)
        if version is not None and version != opts.version:
            raise ProtocolError(f"model {name!r} has no version {version!r} (only {opts.version!r})", 404)

    async def read_body(request: Request) -> bytes:
        limit = int(opts.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"request body of {declared} bytes exceeds the {limit}-byte limit", 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ProtocolError(f"request body exceeds the {limit}-byte limit", 413)
        return body

    async def run(x: np.ndarray) -> np.ndarray:
        if not state["ready"]:
            raise ProtocolError("the model is not ready", 503)
        if len(x) > max_batch:
            raise ProtocolError(f"batch {len(x)} exceeds this server's max batch {max_batch}")
        try:
            return await asyncio.wait_for(state["batcher"].submit(x), timeout=opts.timeout_s)
        except QueueFull as exc:
            raise ProtocolError(f"server busy: {exc}; retry later", 503) from None
        except asyncio.TimeoutError:
            raise ProtocolError(f"inference did not finish within {opts.timeout_s} s", 504) from None
        except AlexnetDeployError as exc:
            raise ProtocolError(str(exc), 400) from None

    model_meta = {
        "name": opts.name, "versions": [opts.version], "platform": PLATFORMS.get(runner.engine.split("-")[0], runner.engine),
        "inputs": [{"name": meta.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": meta.output_name, "datatype": "FP32", "shape": [-1, meta.num_classes]}],
        "parameters": {"variant": meta.variant, "precision": meta.precision, "output_kind": meta.output_kind,
                       "max_batch_size": max_batch, "engine": runner.engine},
    }

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        return error(exc.status, str(exc), request.url.path.rsplit("/", 1)[-1] or "/")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"invalid request: {where}: {first.get('msg', 'bad value')}", "validation")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {exc}", "internal")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), "http")

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "alexnet-deploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None):
        check_model(name, version)
        return model_meta

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        return JSONResponse({"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        t0 = time.perf_counter()
        check_model(name, version)
        req = parse_infer_request(await read_body(request), request.headers.get(HEADER_LENGTH))
        if set(req.inputs) != {meta.input_name}:
            raise ProtocolError(f"this model takes one input named {meta.input_name!r}, got {sorted(req.inputs)}")
        x = req.inputs[meta.input_name]
        if x.dtype != np.float32:
            raise ProtocolError(f"input {meta.input_name!r} must be FP32, got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w) or x.shape[0] < 1:
            raise ProtocolError(f"input {meta.input_name!r} must have shape [N, {c}, {h}, {w}], got {list(x.shape)}")
        out = await run(x)
        body, headers = build_infer_response(name, opts.version, req, {meta.output_name: out})
        metrics.requests.labels("infer", "200").inc()
        metrics.latency.labels("infer").observe(time.perf_counter() - t0)
        return Response(body, headers=headers, media_type=headers["content-type"])

    @app.post("/models/{name}/classify")
    async def classify(name: str, request: Request, top_k: int = 5):
        from PIL import Image, UnidentifiedImageError

        from alexnet_deploy.runtime.postprocess import to_probabilities, topk
        from alexnet_deploy.runtime.preprocess import preprocess_batch, to_rgb

        t0 = time.perf_counter()
        check_model(name, None)
        body = await read_body(request)
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
            files = [v for v in form.values() if hasattr(v, "read")]
            if not files:
                raise ProtocolError("multipart upload without a file field (send the image as 'image')")
            body = await files[0].read()
        if not body:
            raise ProtocolError("empty upload; send image bytes or a multipart 'image' file")
        try:
            with Image.open(io.BytesIO(body)) as img:
                img.load()
                img = to_rgb(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ProtocolError(f"the upload is not a readable image: {exc}") from None
        out = await run(preprocess_batch([img], meta.preprocessing))
        probs = to_probabilities(out, meta.output_kind)
        metrics.requests.labels("classify", "200").inc()
        metrics.latency.labels("classify").observe(time.perf_counter() - t0)
        return {"model_name": name, "top": topk(probs, top_k, meta.class_names)[0]}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(runner, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    config = uvicorn.Config(create_app(runner, options), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=30, limit_concurrency=options.max_queue * 4)
    uvicorn.Server(config).run()
