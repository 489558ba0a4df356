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

    def on_batch(self, images: int, waits: list[float]) -> None:
        self.batch.observe(images)
        for w in waits:
            self.queue.observe(w)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by (route name, status) and times it."""

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
            code = status[0] if 100 <= status[0] <= 599 else 500
            self.metrics.requests.labels(endpoint, str(code)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
