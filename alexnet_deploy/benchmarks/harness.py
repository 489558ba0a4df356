"""The measurement loop: warm-up by time, then time- or count-bounded runs over rotating input buffers
(so caches do not flatter), as trtexec / ORT perf_test / MLPerf do. One row per (model, engine, batch)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from alexnet_deploy.benchmarks.stats import Summary, summarize
from alexnet_deploy.errors import UserInputError

ROTATING_BUFFERS = 4


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_ms: float = 200.0
    duration_s: float | None = 3.0
    iterations: int | None = None
    windows: int = 5
    cv_threshold: float = 0.05

    def validate(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserInputError("batch sizes must be positive integers, e.g. --batch-sizes 1,8,32")
        if self.iterations is None and (self.duration_s is None or self.duration_s <= 0):
            raise UserInputError("--duration-s must be positive (or give --iterations N)")
        if self.iterations is not None and self.iterations < 1:
            raise UserInputError("--iterations must be at least 1")
        if self.warmup_ms < 0:
            raise UserInputError("--warmup-ms cannot be negative")


@dataclass
class Row:
    model: str
    engine: str
    provider: str
    precision: str
    batch: int
    mode: str  # "end-to-end" (host arrays in and out) | "device-only" | "images" (decode+preprocess too)
    summary: Summary | None = None
    throughput: float | None = None  # images / s
    skipped: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.engine}|{self.precision}|b{self.batch}|{self.mode}"

    def as_dict(self) -> dict:
        d = {"key": self.key, "model": self.model, "engine": self.engine, "provider": self.provider,
             "precision": self.precision, "batch": self.batch, "mode": self.mode, "skipped": self.skipped,
             "throughput_ips": self.throughput, **self.extra}
        if self.summary:
            d.update(self.summary.as_dict())
        return d


def time_loop(step: Callable[[int], object], cfg: BenchConfig) -> list[float]:
    """Run ``step(i)`` for the warm-up, then measure each call; latencies in ms."""
    end = time.perf_counter() + cfg.warmup_ms / 1000.0
    i = 0
    while time.perf_counter() < end or i == 0:
        step(i)
        i += 1
    lat: list[float] = []
    stop = None if cfg.iterations else time.perf_counter() + cfg.duration_s
    while True:
        t0 = time.perf_counter_ns()
        step(i)
        lat.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        if cfg.iterations and len(lat) >= cfg.iterations:
            break
        if stop is not None and time.perf_counter() >= stop and len(lat) >= 2:
            break
    return lat


def rotating_inputs(shape: tuple, seed: int = 0, meta=None) -> list[np.ndarray]:
    """Input buffers of ``shape``; with ``meta`` (ModelMetadata), what that model's input takes
    (``random_model_input``: uint8 NHWC pixels for a uint8-nhwc model, batch ``shape[0]``)."""
    if meta is not None:
        from alexnet_deploy.runtime.preprocess import random_model_input

        return [random_model_input(meta, shape[0], seed + k) for k in range(ROTATING_BUFFERS)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(ROTATING_BUFFERS)]


def bench_runner(runner, batch: int, cfg: BenchConfig) -> tuple[Summary, float]:
    bufs = rotating_inputs((batch, *runner.metadata.input_dims), meta=runner.metadata)
    lat = time_loop(lambda i: runner.infer(bufs[i % len(bufs)]), cfg)
    s = summarize(lat, cfg.windows, cfg.cv_threshold)
    return s, batch * 1000.0 / s.mean_ms


def bench_bare_ort(session, input_name: str, shape: tuple, cfg: BenchConfig, meta=None) -> tuple[Summary, float]:
    """A bare ``session.run`` loop: the yardstick for the harness's own overhead."""
    bufs = rotating_inputs(shape, meta=meta)
    lat = time_loop(lambda i: session.run(None, {input_name: bufs[i % len(bufs)]}), cfg)
    s = summarize(lat, cfg.windows, cfg.cv_threshold)
    return s, shape[0] * 1000.0 / s.mean_ms


def bench_images(runner, files: list[str], batch: int, cfg: BenchConfig) -> tuple[Summary, float]:
    """End-to-end including JPEG/PNG decoding and preprocessing of real images."""
    from alexnet_deploy.runtime.preprocess import load_image, model_batch

    meta = runner.metadata

    def step(i):
        chunk = [files[(i * batch + k) % len(files)] for k in range(batch)]
        runner.infer(model_batch([load_image(f) for f in chunk], meta))

    lat = time_loop(step, cfg)
    s = summarize(lat, cfg.windows, cfg.cv_threshold)
    return s, batch * 1000.0 / s.mean_ms
