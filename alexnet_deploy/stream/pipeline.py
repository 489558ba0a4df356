"""The stream pipeline: one decode thread per source, one inference thread that batches across sources (as
DeepStream's ``nvstreammux`` does), one output thread; joined by bounded queues.

The model is activated and warmed up *before* any source is opened, so no startup backlog forms. Live sources
(cameras, network streams, GStreamer) never wait for inference: each hands its frames over through a single
slot that holds only the newest frame; a frame replaced there is counted as dropped and was never converted to
RGB or preprocessed (conversion happens when inference takes the frame). The source itself drops earlier still
(see :mod:`~alexnet_deploy.stream.sources`): its packets are read on their own thread and, when decoding falls
behind, dropped up to the next key frame; non-reference frames are not even decoded while the slot is full.
``--max-fps`` skips frames before their conversion as well. Files and image folders never drop: the decoder
waits, and preprocessing happens in the decode thread; inference waits for a full batch.

Each frame's age (result time minus the source's own capture time on the wall clock) is kept per stream.

One stream that breaks off ends alone; the others go on (unless ``fail_fast``). The calling (main) thread
opens the sources and then only waits; a ``KeyboardInterrupt`` there (Ctrl-C, or SIGTERM / SIGHUP turned into
one) stops the sources, lets the frames already decoded flow through, finalizes the videos and returns the
summary. A second interrupt discards what is still queued and finalizes at once.
"""
from __future__ import annotations

import errno as errno_mod
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from alexnet_deploy.errors import AlexnetDeployError, OutputWriteError
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
    max_frames: int | None = None  # per stream
    duration_s: float | None = None
    queue_frames: int | None = None  # files, per queue; default min(2 x batch, MAX_QUEUE_FRAMES); live: 1 slot
    warmup: bool = True  # one inference before the sources open, so the first frames do not pay for it
    fail_fast: bool = False  # several streams: one that fails stops them all


@dataclass
class Frame:
    raw: RawFrame
    t_decoded: float  # perf_counter when it left the decoder
    wall_time: float  # time.time() at that moment
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    x: np.ndarray | None = None
    top: list[dict] | None = None
    batch: int = 0
    stream: "_Stream | None" = None


@dataclass
class StreamResult:
    stats: StreamStats
    error: AlexnetDeployError | None = None  # a source that broke off, or a stage that failed
    interrupted: bool = False
    video_kept: bool | None = None  # None: no --output (several streams: True only if every video was kept)
    videos_kept: list[bool | None] = field(default_factory=list)  # per stream
    video_errors: list[str | None] = field(default_factory=list)  # per stream: why its video could not be written


class _Stream:
    """One source's state in a run."""

    def __init__(self, sid: int, source: Source, live: bool, queue: StageQueue, stats: StreamStats):
        self.id = sid
        self.source = source
        self.live = live
        self.q = queue
        self.stats = stats
        self.video = None
        self.video_kept: bool | None = None
        self.video_error: str | None = None
        self.error: AlexnetDeployError | None = None
        self.stop = threading.Event()  # this stream only (its failure, --max-frames); the run's stop sets it too
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.finished = False  # inference has seen the end of its queue
        self.meter = RateMeter()


class StreamPipeline:
    """Run ``source`` (one :class:`Source` or a list: one stream each, not yet opened) through ``runner`` (not
    yet activated; activated and used in the inference thread) into the sinks.

    ``video``: a :class:`~alexnet_deploy.stream.sinks.VideoSink`, a list of them (one per stream, None for a
    stream without one), or a callable ``(stream_id, opened_source) -> sink | None`` called once the source is
    open (so the sink can take the source's frame rate). ``on_record`` receives each frame's JSON-ready dict
    (returns False to stop, e.g. a closed stdout)."""

    def __init__(self, source: Source | Sequence[Source], runner, options: StreamOptions, *, video=None,
                 on_record: Callable[[dict], bool] | None = None, progress: bool = False):
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not sources:
            raise ValueError("no source")
        self.runner = runner
        self.meta = runner.metadata
        self.opts = options
        self.on_record = on_record
        self.progress = progress
        self._video_spec = video
        b = max(1, options.batch)
        qn = options.queue_frames or min(2 * b, MAX_QUEUE_FRAMES)
        self._arrived = threading.Event()
        self.streams: list[_Stream] = []
        for sid, src in enumerate(sources):
            q = StageQueue(1, drop_oldest=True, on_put=self._arrived.set) if src.live else \
                StageQueue(qn, on_put=self._arrived.set)
            st = StreamStats(source=src.description, live=src.live, batch=b, stream=sid)
            self.streams.append(_Stream(sid, src, src.live, q, st))
        self.multi = len(self.streams) > 1
        self.source = sources[0]
        self.live = any(s.live for s in self.streams)
        self.q_results = StageQueue(max(qn, 2 * len(self.streams)))
        self.stats = StreamStats(source=" + ".join(s.stats.source for s in self.streams), live=self.live, batch=b,
                                 streams=[s.stats for s in self.streams])
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[tuple[str, BaseException]] = []
        self._threads: dict[str, threading.Thread] = {}
        self._done = {stage: threading.Event() for stage in ("infer", "output")}
        self._annotate_stream_kw = _annotate_takes_stream()

    @property
    def owns_source(self) -> bool:
        """True once the pipeline has taken charge of its sources (it closes them itself, and nobody else may:
        a stalled camera's read can still be in progress in a decode thread)."""
        return any(s.thread is not None and s.thread.ident is not None for s in self.streams)

    @property
    def video(self):
        return self.streams[0].video

    # ------------------------------------------------------------------------------------------------------
    def run(self) -> StreamResult:
        self._threads = threads = {
            "infer": threading.Thread(target=self._guard(self._infer, "infer"), name="stream-infer", daemon=True),
            "output": threading.Thread(target=self._guard(self._output, "output"), name="stream-output",
                                       daemon=True),
        }
        interrupted = False
        try:
            threads["infer"].start()
            while not self._ready.wait(POLL_S):  # the model loads before any source opens
                if not threads["infer"].is_alive():
                    break
            if self._ready.is_set():
                self._open_sources()  # errors opening a source are the run's error: nothing has started yet
                self.stats.started = time.perf_counter()
                for st in self.streams:
                    st.stats.started = self.stats.started
                threads["output"].start()
                for st in self.streams:
                    st.thread = threading.Thread(target=self._decode_guard, args=(st,),
                                                 name=f"stream-decode-{st.id}", daemon=True)
                    st.thread.start()
            else:
                self.q_results.close()
                threads["output"].start()
            self._wait("output")
        except KeyboardInterrupt:
            interrupted = True
            self.stats.stopped_by = "interrupted"
            self._stop_all(drain=True)  # what is decoded still flows through; nothing new enters
            try:
                self._wait("output")
            except KeyboardInterrupt:  # again: finalize now with what is written
                self._abort_all()
                self._wait("output", interruptible=False)
        finally:
            self._stop.set()
            for st in self.streams:
                st.stop.set()
            self._abort_all()
            if threads["output"].ident is None:  # never started: sinks created, nothing to finalize
                self._close_videos(keep=False)
            self._wait("output", interruptible=False, timeout=None)  # output finalizes the videos: no limit
            self._wait("infer", interruptible=False, timeout=STAGE_JOIN_S)
            deadline = time.monotonic() + STAGE_JOIN_S
            for st in self.streams:
                if st.thread is None:
                    st.source.close()  # opened (or not) here, never read
                elif st.thread.ident is not None:
                    _wait_event(st.done, max(0.0, deadline - time.monotonic()))
            self.stats.finished = time.perf_counter()
            for st in self.streams:
                st.stats.finished = self.stats.finished
        return self._result(interrupted)

    def _open_sources(self) -> None:
        for st in self.streams:
            st.source.stop = st.stop
            st.source.open()
            if callable(self._video_spec) and not hasattr(self._video_spec, "write"):
                st.video = self._video_spec(st.id, st.source)
            elif isinstance(self._video_spec, (list, tuple)):
                st.video = self._video_spec[st.id] if st.id < len(self._video_spec) else None
            elif st.id == 0:
                st.video = self._video_spec

    def _result(self, interrupted: bool) -> StreamResult:
        total = self.stats
        total.total_from_streams()
        errors = []
        for st in self.streams:
            if st.error is not None:
                st.stats.stopped_by = "error"
                st.stats.error = str(st.error)
                errors.append(st)
        error = None
        if self._errors:
            stage, exc = self._errors[0]
            error = exc if isinstance(exc, AlexnetDeployError) else AlexnetDeployError(
                f"stream {stage} stage failed: {type(exc).__name__}: {exc}")
        elif errors:
            if not self.multi:
                error = errors[0].error
            else:
                first = errors[0]
                more = "" if len(errors) == 1 else \
                    f"; also failed: {', '.join(f'stream {s.id}' for s in errors[1:])}"
                msg = f"stream {first.id}: {first.error}{more}"
                error = OutputWriteError(msg, getattr(first.error, "errno", None)) \
                    if isinstance(first.error, OutputWriteError) else SourceError(msg)
        if total.stopped_by not in ("interrupted", "output closed"):
            if error is not None:
                total.stopped_by = "error"
            elif self.streams:
                reasons = {s.stats.stopped_by for s in self.streams}
                total.stopped_by = self.streams[0].stats.stopped_by if len(reasons) == 1 else ", ".join(sorted(reasons))
        if interrupted:
            for st in self.streams:
                if st.stats.stopped_by == "end of stream":
                    st.stats.stopped_by = "interrupted"
        total.error = str(error) if error is not None else None
        kept = [st.video_kept for st in self.streams]
        with_video = [k for k in kept if k is not None]
        video_kept = None if not with_video else all(with_video)
        return StreamResult(total, error, interrupted, video_kept, kept, [st.video_error for st in self.streams])

    def _stop_all(self, drain: bool) -> None:
        self._stop.set()
        for st in self.streams:
            st.stop.set()
            if drain:
                st.q.close()

    def _abort_all(self) -> None:
        for st in self.streams:
            st.q.abort()
        self.q_results.abort()

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
                for st in self.streams:
                    st.stop.set()
                if stage == "output":
                    self._abort_all()
                else:  # inference: upstream stops now, the output drains what it has and finalizes
                    for st in self.streams:
                        st.q.abort()
                    self.q_results.close()
            finally:
                self._done[stage].set()
        return run

    def _decode_guard(self, st: _Stream) -> None:
        try:
            self._decode(st)
        except BaseException as exc:  # this stream ends; the others go on unless --fail-fast
            if not isinstance(exc, AlexnetDeployError):
                log.debug("stream %d decode failed", st.id, exc_info=True)
                exc = AlexnetDeployError(f"{st.source.description}: {type(exc).__name__}: {exc}")
            if st.error is None:
                st.error = exc
            if self.opts.fail_fast:
                self._stop_all(drain=True)
        finally:
            st.q.close()  # what it decoded is still classified
            st.done.set()

    # stages -----------------------------------------------------------------------------------------------
    def _decode(self, st: _Stream) -> None:
        opts, q, stats, src = self.opts, st.q, st.stats, st.source
        period = 1.0 / opts.max_fps if opts.max_fps else 0.0
        t_start = time.perf_counter()
        next_due = t_start
        keep_image = st.video is not None
        if st.live:  # the decoder may skip non-reference frames while the slot already holds a frame
            src.consumer_busy = lambda: len(q) > 0
        frames = src.frames()
        try:
            while not (self._stop.is_set() or st.stop.is_set()):
                if opts.max_frames is not None and (  # files: frames sent on; live: frames classified
                        stats.frames >= opts.max_frames if st.live
                        else stats.decoded - stats.skipped >= opts.max_frames):
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
                # the decoder's own time when the source measures it (a live source's wait for the next packet
                # is not decoding), else the time the source took to hand the frame over
                decode_s = raw.decode_s if raw.decode_s is not None else now - t0
                stats.decoded += 1
                if period:  # before the frame is converted to RGB: a skipped frame costs its decode only
                    if st.live:  # keep every n-th frame, on the source's own clock
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
                frame = Frame(raw, now, time.time(), {"decode": decode_s}, stream=st)
                if not st.live:  # files never drop: preprocess here, in parallel with inference
                    self._preprocess(frame, keep_image)
                try:
                    stats.dropped += q.put(frame)
                except Closed:
                    break
        finally:
            q.close()
            try:
                frames.close()
            finally:
                src.close()
                stats.dropped += src.dropped
                stats.reconnects = src.reconnects
                stats.unreadable = src.unreadable

    def _preprocess(self, frame: Frame, keep_image: bool) -> None:
        t0 = time.perf_counter()
        frame.x = model_batch([frame.raw.image], self.meta)  # a live frame is converted to RGB only here
        frame.stages["preprocess"] = time.perf_counter() - t0
        if not keep_image:
            frame.raw.image = None  # only the annotated video needs the full-resolution picture

    def _gather(self, b: int) -> list[Frame] | None:
        """Up to ``b`` frames, round-robin over the streams: a live stream's slot if it holds one, a file's next
        frame (waiting for it). None once every stream has ended."""
        streams = self.streams
        n = len(streams)
        while True:
            self._arrived.clear()
            batch: list[Frame] = []
            progressed = True
            while len(batch) < b and progressed:
                progressed = False
                for k in range(n):
                    st = streams[(self._rr + k) % n]
                    if st.finished or len(batch) >= b:
                        continue
                    try:
                        item = st.q.get(block=not st.live)
                    except Closed:
                        st.finished = True
                        continue
                    if item is not None:
                        batch.append(item)
                        progressed = True
            self._rr = (self._rr + 1) % n
            if batch:
                return batch
            if all(st.finished for st in streams):
                return None
            self._arrived.wait(POLL_S)

    def _infer(self) -> None:
        runner, meta, b = self.runner, self.meta, max(1, self.opts.batch)
        self._rr = 0
        try:
            with runner:
                self.stats.engine = runner.describe()
                for st in self.streams:
                    st.stats.engine = self.stats.engine
                if self.opts.warmup:
                    blank = Image.new("RGB", (meta.preprocessing.crop, meta.preprocessing.crop))
                    runner.infer_batches(np.concatenate([model_batch([blank], meta)] * b), b)
                self._ready.set()
                while True:
                    batch = self._gather(b)
                    if batch is None:
                        break
                    for f in batch:
                        if f.x is None:  # live: converted and preprocessed only now that inference takes it
                            self._preprocess(f, f.stream.video is not None)
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

    def _write_video(self, st: _Stream, f: Frame, fps: float) -> None:
        if st.video is None or st.video_error is not None:
            return
        try:
            st.video.write(self._annotate(f, st, fps), f.raw.time)
        except Exception as exc:  # noqa: BLE001 - disk full, quota, a dead RTSP server: this stream's output ends
            if not _is_write_error(exc):
                raise
            self._video_failed(st, exc, "writing")

    def _video_failed(self, st: _Stream, exc: BaseException, doing: str) -> None:
        code = getattr(exc, "errno", None)
        text = str(exc)
        full = code == errno_mod.ENOSPC or "No space left on device" in text
        after = f"after {st.stats.frames} classified frame(s)"
        if isinstance(exc, AlexnetDeployError):  # the sink's own line already names the output
            msg = f"{text.rstrip('.')} {after}"
        else:
            reason = getattr(exc, "strerror", None) or text
            where = printable_path(getattr(st.video, "target", None) or getattr(st.video, "path", None) or "?")
            msg = f"--output {where}: {doing} the video failed {after}: {reason}"
        if full:
            msg += "; the disk is full"
        st.video_error = msg
        if st.error is None:
            st.error = OutputWriteError(msg, errno_mod.ENOSPC if full else code)
        st.stop.set()  # nothing more is classified for a video that cannot be written
        if self.opts.fail_fast or not self.multi:
            self._stop_all(drain=True)

    def _annotate(self, f: Frame, st: _Stream, fps: float) -> Image.Image:
        if not self.multi:
            return annotate(f.raw.image, f.top, fps)
        if self._annotate_stream_kw:
            return annotate(f.raw.image, f.top, fps, stream=st.id)
        out = annotate(f.raw.image, f.top, fps)
        draw = ImageDraw.Draw(out)  # the stream id in the bottom-left corner
        text = f"stream {st.id}"
        w, h = out.size
        box = draw.textbbox((0, 0), text)
        tw, th = box[2] - box[0], box[3] - box[1]
        draw.rectangle((0, h - th - 6, tw + 6, h), fill=(0, 0, 0))
        draw.text((3, h - th - 4), text, fill=(255, 255, 255))
        return out

    def _output(self) -> None:
        total = self.stats
        bar = None
        if self.progress:
            from tqdm import tqdm

            count = self.source.frame_count if not self.multi and not self.opts.max_frames else None
            bar = tqdm(total=count, unit="frame", desc="stream", dynamic_ncols=True, leave=False)
        ok = True
        try:
            while True:
                try:
                    f = self.q_results.get()
                except Closed:
                    break
                st = f.stream
                if st.video_error is not None:
                    continue  # its video failed: the stream is stopping, nothing more is recorded for it
                if self.opts.max_frames is not None and st.stats.frames >= self.opts.max_frames:
                    st.stop.set()  # a live stream's frames still in flight past --max-frames
                    continue
                t0 = time.perf_counter()
                fps = st.meter.tick(t0)
                self._write_video(st, f, fps)
                if st.video_error is not None:
                    continue
                done = time.perf_counter()
                f.stages["output"] = done - t0
                f.stages["end_to_end"] = done - f.t_decoded
                age = time.time() - (f.raw.captured if f.raw.captured is not None else f.wall_time)
                st.stats.add(f.stages, age)
                total.add(f.stages, age)
                if self.on_record is not None and not self._send_record(f, age):
                    total.stopped_by = "output closed"
                    self._stop_all(drain=True)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fps=f"{fps:.1f}", dropped=sum(s.stats.dropped for s in self.streams),
                                    refresh=False)
        except BaseException:
            ok = False
            raise
        finally:
            if bar is not None:
                bar.close()
            self._close_videos(keep=ok)

    def _send_record(self, f: Frame, age: float) -> bool:
        """Hand one record on; a record file that cannot be written (disk full) ends the run with one line,
        and the videos are still finalized."""
        try:
            return self.on_record(self._record(f, age))
        except OSError as exc:
            full = exc.errno == errno_mod.ENOSPC
            sink = getattr(self.on_record, "__self__", None)
            name = getattr(getattr(sink, "_file", None), "name", None)
            where = f"--jsonl {printable_path(name)}: " if isinstance(name, str) else ""
            msg = (f"{where}writing the JSON lines failed after {self.stats.frames} frame(s): "
                   f"{exc.strerror or exc}" + ("; the disk is full" if full else ""))
            self._errors.append(("output", OutputWriteError(msg, exc.errno)))
            self.on_record = None
            self._stop_all(drain=True)
            return True

    def _close_videos(self, keep: bool) -> None:
        for st in self.streams:
            if st.video is None or st.video_kept is not None:
                continue
            try:
                st.video_kept = bool(st.video.close(keep=keep))
            except Exception as exc:  # noqa: BLE001 - finalizing on a full disk
                st.video_kept = False
                if _is_write_error(exc) and st.video_error is None:
                    self._video_failed(st, exc, "finalizing")
                elif not _is_write_error(exc):
                    raise

    def _record(self, f: Frame, age_s: float) -> dict:
        rec = {"frame": f.raw.index}
        if self.multi:
            rec = {"stream": f.stream.id, **rec}
        if f.raw.name is not None:
            rec["image"] = printable_path(f.raw.name)  # non-UTF-8 file names stay valid JSON text
        rec["time"] = None if f.raw.time is None else round(f.raw.time, 6)
        rec["wall_time"] = round(f.wall_time, 6)
        rec["top"] = [{"index": t["index"], "label": t["label"],
                       "probability": t["probability"] if math.isfinite(t["probability"]) else None}
                      for t in f.top]
        rec["batch"] = f.batch
        rec["latency_ms"] = {k: round(v * 1e3, 3) for k, v in f.stages.items()}
        rec["age_ms"] = round(age_s * 1e3, 3)
        return rec


def _wait_event(event: threading.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            event.wait(min(left, POLL_S))
        except KeyboardInterrupt:
            pass


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, AlexnetDeployError)):  # the sink's one-line errors included
        return True
    try:
        import av
    except ImportError:
        return False
    return isinstance(exc, av.FFmpegError)


def _annotate_takes_stream() -> bool:
    try:
        return "stream" in inspect.signature(annotate).parameters
    except (TypeError, ValueError):
        return False


__all__ = ["StreamOptions", "StreamPipeline", "StreamResult", "SourceError"]
