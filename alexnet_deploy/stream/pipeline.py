"""The stream pipeline: decode -> preprocess -> infer -> output, each stage a thread, joined by bounded queues.

Live sources (cameras, network streams, GStreamer) never wait for inference: when it falls behind, the oldest
decoded frames are evicted and counted as dropped, so what is classified is always recent. Files and image
folders never drop: the decoder waits. Inference takes up to ``batch`` frames at a time (for files it waits
for a full batch; for live sources it takes what is there, so latency does not grow).

The calling (main) thread only waits; a ``KeyboardInterrupt`` there (Ctrl-C, or SIGTERM / SIGHUP turned into
one) stops the source, lets the frames already decoded flow through, finalizes the video and returns the
summary. A second interrupt discards what is still queued and finalizes at once.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from alexnet_deploy.errors import AlexnetDeployError
from alexnet_deploy.fileio import printable_path
from alexnet_deploy.runtime.postprocess import to_probabilities, topk
from alexnet_deploy.runtime.preprocess import model_batch
from alexnet_deploy.stream.overlay import annotate
from alexnet_deploy.stream.queues import Closed, StageQueue
from alexnet_deploy.stream.sources import RawFrame, Source, SourceError
from alexnet_deploy.stream.summary import RateMeter, StreamStats

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the waiting main thread checks on the workers (and can take a KeyboardInterrupt)
# After the output stage has finished, the other stages are waited for this long at most: a decoder blocked in
# the read of a stalled camera, or a runner still building an engine, is left behind (daemon threads).
STAGE_JOIN_S = 2.0
# Frames per queue: 2 x batch keeps every stage busy while a batch runs, capped because a queue of decoded
# frames holds full-resolution pictures (64 frames of 4K RGB are 1.6 GB).
MAX_QUEUE_FRAMES = 64


@dataclass
class StreamOptions:
    batch: int = 1
    top_k: int = 5
    max_fps: float | None = None  # files: paced to this rate; live sources: frames above it are skipped
    max_frames: int | None = None
    duration_s: float | None = None
    queue_frames: int | None = None  # per queue; default min(2 x batch, MAX_QUEUE_FRAMES); live: batch after decode
    warmup: bool = True  # one inference before the source opens, so the first frames do not pay for it


@dataclass
class Frame:
    raw: RawFrame
    t_decoded: float  # perf_counter when it left the decoder
    wall_time: float  # time.time() at that moment
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    x: np.ndarray | None = None
    top: list[dict] | None = None
    batch: int = 0


@dataclass
class StreamResult:
    stats: StreamStats
    error: AlexnetDeployError | None = None  # a source that broke off, or a stage that failed
    interrupted: bool = False
    video_kept: bool | None = None  # None: no --output


class StreamPipeline:
    """Run ``source`` through ``runner`` (not yet activated; activated and used in the inference thread) into
    the sinks. ``video`` is a :class:`~alexnet_deploy.stream.sinks.VideoSink` or None; ``on_record`` receives
    each frame's JSON-ready dict (returns False to stop, e.g. a closed stdout)."""

    def __init__(self, source: Source, runner, options: StreamOptions, *, video=None,
                 on_record: Callable[[dict], bool] | None = None, progress: bool = False):
        self.source = source
        self.runner = runner
        self.meta = runner.metadata
        self.opts = options
        self.video = video
        self.on_record = on_record
        self.progress = progress
        self.live = source.live
        b = max(1, options.batch)
        qn = options.queue_frames or min(2 * b, MAX_QUEUE_FRAMES)
        live_qn = options.queue_frames or min(b, MAX_QUEUE_FRAMES)  # live: few stale frames wait for inference
        self.q_frames = StageQueue(live_qn if self.live else qn, drop_oldest=self.live)
        self.q_inputs = StageQueue(qn)
        self.q_results = StageQueue(qn)
        self.stats = StreamStats(source=source.description, live=self.live, batch=b)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[tuple[str, BaseException]] = []
        self._threads: dict[str, threading.Thread] = {}
        self._done = {stage: threading.Event() for stage in ("decode", "preprocess", "infer", "output")}
        self._video_kept: bool | None = None

    @property
    def owns_source(self) -> bool:
        """True once the decoder thread has started: it closes the source itself, and nobody else may (a
        stalled camera's read can still be in progress in that thread)."""
        t = self._threads.get("decode")
        return t is not None and t.ident is not None

    # ------------------------------------------------------------------------------------------------------
    def run(self) -> StreamResult:
        self._threads = threads = {
            "infer": threading.Thread(target=self._guard(self._infer, "infer"), name="stream-infer", daemon=True),
            "preprocess": threading.Thread(target=self._guard(self._preprocess, "preprocess"),
                                           name="stream-preprocess", daemon=True),
            "output": threading.Thread(target=self._guard(self._output, "output"), name="stream-output",
                                       daemon=True),
            "decode": threading.Thread(target=self._guard(self._decode, "decode"), name="stream-decode",
                                       daemon=True),
        }
        interrupted = False
        try:
            threads["infer"].start()
            while not self._ready.wait(POLL_S):  # the model loads before the source starts producing
                if not threads["infer"].is_alive():
                    break
            if self._ready.is_set():
                self.stats.started = time.perf_counter()
                for name in ("preprocess", "output", "decode"):
                    threads[name].start()
            else:
                self.q_results.close()
                threads["output"].start()
            self._wait("output")
        except KeyboardInterrupt:
            interrupted = True
            self.stats.stopped_by = "interrupted"
            self._stop.set()
            self.q_frames.close()  # what is decoded still flows through; nothing new enters
            try:
                self._wait("output")
            except KeyboardInterrupt:  # again: finalize now with what is written
                for q in (self.q_frames, self.q_inputs, self.q_results):
                    q.abort()
                self._wait("output", interruptible=False)
        finally:
            self._stop.set()
            for q in (self.q_frames, self.q_inputs, self.q_results):
                q.abort()
            for name in ("output", "infer", "preprocess", "decode"):  # output finalizes the video: no time limit
                self._wait(name, interruptible=False, timeout=None if name == "output" else STAGE_JOIN_S)
            self.stats.finished = time.perf_counter()
        error = None
        if self._errors:
            stage, exc = self._errors[0]
            if self.stats.stopped_by not in ("interrupted",):
                self.stats.stopped_by = "error"
            error = exc if isinstance(exc, AlexnetDeployError) else AlexnetDeployError(
                f"stream {stage} stage failed: {type(exc).__name__}: {exc}")
        return StreamResult(self.stats, error, interrupted, self._video_kept)

    def _wait(self, stage: str, *, interruptible: bool = True, timeout: float | None = None) -> None:
        """Wait for a stage's thread to finish. Not with ``Thread.join``: a KeyboardInterrupt that lands in
        ``join`` on Python < 3.13 marks the still-running thread as stopped (CPython gh-90882), after which
        nothing can wait for it; an Event has no such problem."""
        if self._threads[stage].ident is None:  # never started
            return
        done, deadline = self._done[stage], None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if done.wait(POLL_S):
                    return
            except KeyboardInterrupt:
                if interruptible:
                    raise
            if deadline is not None and time.monotonic() > deadline:
                return

    def _guard(self, fn, stage: str):
        def run():
            try:
                fn()
            except BaseException as exc:  # recorded and reported by run(); the other stages wind down
                if not isinstance(exc, AlexnetDeployError):
                    log.debug("stream %s stage failed", stage, exc_info=True)
                self._errors.append((stage, exc))
                self._stop.set()
                if stage == "decode":  # a source that broke off: what was decoded is still classified
                    self.q_frames.close()
                elif stage == "output":
                    for q in (self.q_frames, self.q_inputs, self.q_results):
                        q.abort()
                else:  # upstream stops now, downstream drains what it has and finalizes
                    upstream = {"preprocess": [self.q_frames], "infer": [self.q_frames, self.q_inputs]}[stage]
                    for q in upstream:
                        q.abort()
                    (self.q_inputs if stage == "preprocess" else self.q_results).close()
            finally:
                self._done[stage].set()
        return run

    # stages -----------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        opts, q, stats = self.opts, self.q_frames, self.stats
        period = 1.0 / opts.max_fps if opts.max_fps else 0.0
        t_start = time.perf_counter()
        next_due = t_start
        frames = self.source.frames()
        try:
            while not self._stop.is_set():
                if opts.max_frames is not None and stats.decoded - stats.skipped >= opts.max_frames:
                    stats.stopped_by = "--max-frames"
                    break
                if opts.duration_s is not None and time.perf_counter() - t_start >= opts.duration_s:
                    stats.stopped_by = "--duration"
                    break
                t0 = time.perf_counter()
                try:
                    raw = next(frames)
                except StopIteration:
                    break
                now = time.perf_counter()
                decode_s = now - t0
                stats.decoded += 1
                if period:
                    if self.live:  # keep every n-th frame, on the source's own clock
                        if now < next_due:
                            stats.skipped += 1
                            continue
                        next_due = max(next_due + period, now - period)
                    else:  # pace a file like a player would
                        if now < next_due:
                            if self._stop.wait(next_due - now):
                                break
                            now = time.perf_counter()
                        next_due = max(next_due + period, now - period)
                frame = Frame(raw, now, time.time(), {"decode": decode_s})
                try:
                    stats.dropped += q.put(frame)
                except Closed:
                    break
        finally:
            q.close()
            frames.close()
            self.source.close()

    def _preprocess(self) -> None:
        try:
            while True:
                frame = self.q_frames.get()
                t0 = time.perf_counter()
                frame.x = model_batch([frame.raw.image], self.meta)
                frame.stages["preprocess"] = time.perf_counter() - t0
                if self.video is None:
                    frame.raw.image = None  # only the annotated video needs the full-resolution picture
                self.q_inputs.put(frame)
        except Closed:
            pass
        finally:
            self.q_inputs.close()

    def _infer(self) -> None:
        runner, meta, b = self.runner, self.meta, max(1, self.opts.batch)
        try:
            with runner:
                self.stats.engine = runner.describe()
                if self.opts.warmup:
                    blank = Image.new("RGB", (meta.preprocessing.crop, meta.preprocessing.crop))
                    runner.infer_batches(np.concatenate([model_batch([blank], meta)] * b), b)
                self._ready.set()
                done = False
                while not done:
                    try:
                        batch = [self.q_inputs.get()]
                    except Closed:
                        break
                    while len(batch) < b:  # files: wait for a full batch; live: take what is there
                        try:
                            item = self.q_inputs.get(block=not self.live)
                        except Closed:
                            done = True
                            break
                        if item is None:
                            break
                        batch.append(item)
                    t0 = time.perf_counter()
                    out = runner.infer_batches(np.concatenate([f.x for f in batch]), b)
                    tops = topk(to_probabilities(out, meta.output_kind), self.opts.top_k, meta.class_names)
                    dt = time.perf_counter() - t0
                    for f, top in zip(batch, tops):
                        f.top, f.batch, f.x = top, len(batch), None
                        f.stages["infer"] = dt
                        self.q_results.put(f)
        except Closed:
            pass
        finally:
            self.q_results.close()

    def _output(self) -> None:
        meter, stats = RateMeter(), self.stats
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.source.frame_count if not self.opts.max_frames else None, unit="frame",
                       desc="stream", dynamic_ncols=True, leave=False)
        ok = True
        try:
            while True:
                try:
                    f = self.q_results.get()
                except Closed:
                    break
                t0 = time.perf_counter()
                fps = meter.tick(t0)
                if self.video is not None:
                    self.video.write(annotate(f.raw.image, f.top, fps), f.raw.time)
                done = time.perf_counter()
                f.stages["output"] = done - t0
                f.stages["end_to_end"] = done - f.t_decoded
                stats.add(f.stages)
                if self.on_record is not None and not self.on_record(self._record(f)):
                    stats.stopped_by = "output closed"
                    self._stop.set()
                    self.q_frames.close()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fps=f"{fps:.1f}", dropped=stats.dropped, refresh=False)
        except BaseException:
            ok = False
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.video is not None:
                self._video_kept = self.video.close(keep=ok)

    def _record(self, f: Frame) -> dict:
        rec = {"frame": f.raw.index}
        if f.raw.name is not None:
            rec["image"] = printable_path(f.raw.name)  # non-UTF-8 file names stay valid JSON text
        rec["time"] = None if f.raw.time is None else round(f.raw.time, 6)
        rec["wall_time"] = round(f.wall_time, 6)
        rec["top"] = [{"index": t["index"], "label": t["label"],
                       "probability": t["probability"] if math.isfinite(t["probability"]) else None}
                      for t in f.top]
        rec["batch"] = f.batch
        rec["latency_ms"] = {k: round(v * 1e3, 3) for k, v in f.stages.items()}
        return rec


__all__ = ["StreamOptions", "StreamPipeline", "StreamResult", "SourceError"]
