"""Prometheus metrics of alexnet-serve, with label values from fixed sets only.

A request never chooses a label: the endpoint label is the name of the route that matched (``infer``,
``classify``, ``metadata``, ... or ``unmatched``), the status label an HTTP status code. A label per unknown
model name or URL would grow ``/metrics`` and the server's memory without bound."""
from __future__ import annotations

import time

UNMATCHED = "unmatched"


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("alexnet_requests", "Requests by endpoint (route name) and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("alexnet_request_latency_seconds", "Request latency by endpoint (route name)",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue = Histogram("alexnet_queue_seconds", "Time a request waited for its batch", registry=self.registry,
                               buckets=(.0001, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1))
        self.batch = Histogram("alexnet_batch_size", "Images per executed batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.stats = ModelStats()

    def on_batch(self, images: int, waits: list[float], compute_s: float = 0.0) -> None:
        self.batch.observe(images)
        for w in waits:
            self.queue.observe(w)
        self.stats.on_batch(images, waits, compute_s)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """One finished request (HTTP or gRPC): counted by (endpoint, status) and timed by endpoint."""
        code = status if 100 <= status <= 599 else 500
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by (route name, status) and times it (gRPC calls count in
    the same series: server/grpc_service.py)."""

    def __init__(self, app, metrics: Metrics, route_names: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.route_names = route_names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "name", None)
            endpoint = name if name in self.route_names else UNMATCHED
            self.metrics.observe(endpoint, status[0], time.perf_counter() - t0)


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self):
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9)

    def json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Triton's statistics extension (GET /v2/models/{m}/stats) for the one served model: plain counters,
    updated on the event loop (the batcher reports from there), so the request path pays a few additions."""

    KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")

    def __init__(self):
        self.inference = {k: _Duration() for k in self.KINDS}
        self.batches: dict[int, dict[str, _Duration]] = {}
        self.inference_count = 0  # images inferred (Triton counts each batch element)
        self.execution_count = 0  # batches run
        self.last_inference_ms = 0

    def on_batch(self, images: int, waits: list[float], compute_s: float) -> None:
        self.inference_count += images
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        for w in waits:
            self.inference["queue"].add(w)
        self.inference["compute_infer"].add(compute_s, len(waits))
        per = self.batches.get(images)
        if per is None:
            if len(self.batches) >= 1024:  # batch sizes are bounded by --max-batch; a guard all the same
                return
            per = self.batches[images] = {k: _Duration() for k in ("compute_input", "compute_infer", "compute_output")}
        per["compute_infer"].add(compute_s)

    def on_request(self, ok: bool, total_s: float, input_s: float = 0.0, output_s: float = 0.0) -> None:
        self.inference["success" if ok else "fail"].add(total_s)
        if ok:
            self.inference["compute_input"].add(input_s)
            self.inference["compute_output"].add(output_s)

    def json(self, name: str, version: str) -> dict:
        return {"model_stats": [{
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {k: d.json() for k, d in self.inference.items()},
            "batch_stats": [{"batch_size": b, **{k: d.json() for k, d in per.items()}}
                            for b, per in sorted(self.batches.items())],
            "memory_usage": [],
        }]}
