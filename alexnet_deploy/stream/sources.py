"""Frame sources: image files / folders / globs, video files, V4L2 cameras, network streams (PyAV), and
GStreamer pipelines including Jetson CSI cameras (OpenCV built with GStreamer, as JetPack ships it).

No decoding is done here by hand: PyAV (FFmpeg) decodes files, cameras and network streams, Pillow decodes
images, GStreamer decodes what its pipeline says. Every failure to find or open a source is one line
(:class:`~alexnet_deploy.errors.UserInputError` or :class:`~alexnet_deploy.errors.MissingDependencyError`).

Live sources (cameras, network streams, pipelines) are read on their own thread, so the socket and the demuxer
never back up while the decoder or the model is busy: packets wait in a short queue, and when the decoder falls
more than :data:`MAX_BACKLOG_S` behind, the queued packets are dropped up to the next key frame (what is decoded
stays decodable). While the consumer cannot take a frame, the decoder skips non-reference frames itself
(FFmpeg's ``skip_frame``). Frames are converted to RGB only when somebody looks at ``RawFrame.image``: a frame
dropped or skipped never pays for the conversion.

End of a file is an end; a live source that stops (a server that closes the connection, a camera that goes
silent for ``--timeout`` seconds) and a file that ends before its header says it should (truncated) raise
:class:`SourceError`, which :class:`Reopening` turns into a reconnect when the user asked for one.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from alexnet_deploy.errors import MissingDependencyError, UserInputError
from alexnet_deploy.fileio import printable_path
from alexnet_deploy.runtime.preprocess import IMAGE_SUFFIXES, find_images, load_image

# Network protocols handed to FFmpeg. Anything else with a scheme is refused with the list.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
HTTP_SCHEMES = ("http", "https")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv",
                  ".wmv", ".ogv", ".3gp", ".h264", ".264", ".hevc", ".h265", ".y4m")  # not .mjpg: cameras' feeds
# Over HTTP these are how live streams are served (MPEG-TS, HLS playlists, FLV), not downloadable files.
HTTP_LIVE_SUFFIXES = (".ts", ".m2ts", ".m3u8", ".flv", ".mjpg", ".mjpeg", ".cgi", "")
# Seconds to wait for a camera or network stream to open, and for each read (FFmpeg's own timeouts).
DEFAULT_TIMEOUT_S = 10.0
# Live sources: packets queued this long (decoder behind) are dropped up to the next key frame.
MAX_BACKLOG_S = 0.5
# A packet this much later than the source's clock predicts means its timestamps jumped: the clock restarts.
CLOCK_JUMP_S = 5.0
# csi://N defaults (nvarguscamerasrc modes every Jetson CSI sensor offers); override with csi://0?width=...
CSI_DEFAULTS = {"width": 1280, "height": 720, "fps": 30, "flip": 0}
STREAM_PIP = "'alexnet-deploy[stream]'"
# --input-codec NAME: the RTP payload format FFmpeg's SDP demuxer knows it by (RFC 6184, 7798, 6416, 7741, ...)
RTP_CODECS = {"h264": "H264/90000", "hevc": "H265/90000", "h265": "H265/90000", "mpeg4": "MP4V-ES/90000",
              "vp8": "VP8/90000", "vp9": "VP9/90000", "mjpeg": "JPEG/90000", "mpegts": "MP2T/90000"}
RTP_STATIC_PT = {"mjpeg": 26, "mpegts": 33}
RTP_DYNAMIC_PT = 96


@dataclass
class SourceSpec:
    """What a source argument names. ``kind``: images | video | v4l2 | url | csi | gstreamer."""

    kind: str
    target: str  # a path, device, URL or GStreamer pipeline
    files: list[str] = field(default_factory=list)  # kind == "images"
    live: bool = False
    input_format: str | None = None  # FFmpeg demuxer (PyAV ``format=``)
    input_codec: str | None = None  # rtp:// without SDP: the payload's codec

    @property
    def input_paths(self) -> list[str]:
        """Files read by this source (an output must not overwrite one of them)."""
        if self.kind == "images":
            return list(self.files)
        return [self.target] if self.kind == "video" else []

    @property
    def reconnectable(self) -> bool:
        """Network streams and cameras can be reopened after a break (--reconnect); files and images cannot."""
        return self.kind in ("url", "v4l2", "csi", "gstreamer")


class RawFrame:
    """One frame: its position in the source, presentation time, and the picture (RGB, converted on first use).

    ``captured`` is the wall-clock time (``time.time()``) the frame was taken at, as far as the source can tell
    (its timestamp mapped onto the clock the packets arrived by), or None: then the moment it was decoded."""

    __slots__ = ("index", "time", "name", "captured", "decode_s", "_image", "_convert")

    def __init__(self, index: int, time: float | None, image: Image.Image | None = None, name: str | None = None,
                 *, convert: Callable[[], Image.Image] | None = None, captured: float | None = None):
        self.index = index
        self.time = time
        self.name = name
        self.captured = captured
        self.decode_s: float | None = None  # seconds the decoder spent on it (None: the source cannot tell)
        self._image = image
        self._convert = convert

    @property
    def image(self) -> Image.Image | None:
        if self._image is None and self._convert is not None:
            convert, self._convert = self._convert, None
            self._image = convert()
        return self._image

    @image.setter
    def image(self, value: Image.Image | None) -> None:
        self._image, self._convert = value, None


def parse_source(args: Sequence[str], *, live: bool | None = None, input_format: str | None = None,
                 input_codec: str | None = None) -> SourceSpec:
    """Classify the SOURCE arguments (checks only what can be checked without opening anything)."""
    args = [os.fspath(a) for a in args]
    if not args:
        raise UserInputError("give a source: images, a folder, a video file, /dev/videoN, a URL or csi://N")
    if len(args) > 1:
        specs = [parse_source([a]) for a in args]
        if any(s.kind != "images" for s in specs):
            raise UserInputError("only image files, folders and globs can be combined; give one video, "
                                 "camera, URL or pipeline at a time (several streams: --source each)")
        spec = SourceSpec("images", " ".join(args), files=[f for s in specs for f in s.files])
        return _finish(spec, live, input_format, input_codec)
    arg = args[0]
    if not arg.strip():
        raise UserInputError("the source is an empty string")
    if arg.startswith("csi://"):
        csi_pipeline(arg)  # a malformed csi:// URL is refused before anything loads
        return _finish(SourceSpec("csi", arg, live=True), live, input_format, input_codec)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", arg)
    if scheme:
        name = scheme.group(1).lower()
        if name == "file":
            return parse_source([urlsplit(arg).path], live=live, input_format=input_format, input_codec=input_codec)
        if name in LIVE_SCHEMES:
            return _finish(SourceSpec("url", arg, live=True), live, input_format, input_codec)
        if name in HTTP_SCHEMES:  # a camera's MJPEG feed or a live .ts / HLS is live; a file served over HTTP not
            suffix = Path(urlsplit(arg).path).suffix.lower()
            is_file = suffix in VIDEO_SUFFIXES and suffix not in HTTP_LIVE_SUFFIXES
            return _finish(SourceSpec("url", arg, live=not is_file), live, input_format, input_codec)
        raise UserInputError(f"unsupported source {arg!r}: scheme {name}:// is not one of "
                             f"{', '.join(s + '://' for s in LIVE_SCHEMES + HTTP_SCHEMES)}, csi://, file://")
    if "!" in arg and not os.path.exists(arg):
        return _finish(SourceSpec("gstreamer", arg, live=not _finite_pipeline(arg)), live, input_format, input_codec)
    if re.fullmatch(r"\d+", arg) and not os.path.exists(arg):
        arg = f"/dev/video{arg}"  # OpenCV's habit: a bare camera number
    if arg.startswith("/dev/"):
        return _finish(_camera(arg), live, input_format, input_codec)
    if os.path.isdir(arg):
        return _finish(SourceSpec("images", arg, files=find_images([arg])), live, input_format, input_codec)
    if os.path.exists(arg):
        if _is_char_device(arg):
            return _finish(_camera(arg), live, input_format, input_codec)
        if Path(arg).suffix.lower() in IMAGE_SUFFIXES:
            return _finish(SourceSpec("images", arg, files=[arg]), live, input_format, input_codec)
        return _finish(SourceSpec("video", arg), live, input_format, input_codec)
    if glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        files = find_images(matches) if matches else []
        if not files:
            raise UserInputError(f"no images match {arg}")
        return _finish(SourceSpec("images", arg, files=files), live, input_format, input_codec)
    raise UserInputError(f"source not found: {arg}")


# GStreamer source elements that read something finite: their end of stream is the end, not a break
GST_FILE_SOURCES = ("filesrc", "multifilesrc", "splitfilesrc")


def _finite_pipeline(pipeline: str) -> bool:
    """A pipeline whose source reads a file, or a test source with ``num-buffers=N`` that is not ``is-live``:
    its end of stream is an end (exit 0), as for a video file. Anything else (a camera, a network source) is
    live; --live / --no-live decide either way."""
    words = pipeline.split("!", 1)[0].split()
    if not words:
        return False
    props = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if words[0] in GST_FILE_SOURCES:
        return True
    live = props.get("is-live", "false").strip("\"'").lower() in ("true", "1", "yes")
    return words[0].endswith("testsrc") and not live and props.get("num-buffers", "-1").strip("\"'") not in (
        "-1", "")


def parse_sources(args: Sequence[str], extra: Sequence[str] = (), *, live: bool | None = None,
                  input_format: str | None = None, input_codec: str | None = None) -> list[SourceSpec]:
    """SOURCE arguments plus ``--source`` values -> one spec per stream.

    SOURCE arguments that are all images make one image stream (as before); several SOURCE arguments that are
    live streams (cameras, URLs, pipelines) are one stream each; every ``--source`` is a stream of its own."""
    kw = dict(live=live, input_format=input_format, input_codec=input_codec)
    specs: list[SourceSpec] = []
    if args:
        if len(args) > 1:
            singles = [parse_source([a], **kw) for a in args]
            if all(s.kind != "images" and s.kind != "video" and s.reconnectable for s in singles):
                specs.extend(singles)
            else:
                specs.append(parse_source(args, **kw))
        else:
            specs.append(parse_source(args, **kw))
    specs.extend(parse_source([a], **kw) for a in extra)
    if not specs:
        raise UserInputError("give a source: images, a folder, a video file, /dev/videoN, a URL or csi://N "
                             "(or --source, repeatable)")
    return specs


def _finish(spec: SourceSpec, live: bool | None, input_format: str | None, input_codec: str | None) -> SourceSpec:
    if live is not None:
        spec.live = live
    if input_format is not None:
        if spec.kind not in ("video", "url", "v4l2"):
            raise UserInputError(f"--input-format applies to video files, cameras and streams, not to {spec.kind} "
                                 f"({spec.target})")
        spec.input_format = input_format
    if input_codec is not None:
        codec = input_codec.split("/")[0].lower()
        if spec.kind != "url" or not spec.target.lower().startswith("rtp://"):
            raise UserInputError(f"--input-codec applies to rtp:// sources without an SDP file, not to {spec.target}")
        if codec not in RTP_CODECS:
            raise UserInputError(f"--input-codec {input_codec}: not one of {', '.join(sorted(RTP_CODECS))}")
        spec.input_codec = input_codec.lower()
    return spec


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _camera(path: str) -> SourceSpec:
    if not os.path.exists(path):
        cams = sorted(glob.glob("/dev/video*"))
        have = f"cameras here: {', '.join(cams)}" if cams else "no /dev/video* device exists on this machine"
        raise UserInputError(f"camera {path} not found ({have})")
    if not _is_char_device(path):
        raise UserInputError(f"{path} is not a camera device (not a character device)")
    if not os.access(path, os.R_OK):
        raise UserInputError(f"camera {path} is not readable by this user (add it to the 'video' group)")
    return SourceSpec("v4l2", path, live=True)


# --------------------------------------------------------------------------------------------------------------
class SourceError(UserInputError):
    """A source failed while it was being read (a camera unplugged, a stream that broke off, a truncated file)."""


class Source:
    """Produces :class:`RawFrame` objects; ``open`` before ``frames``, ``close`` when done (both idempotent).

    ``consumer_busy`` (set by the pipeline) says whether a frame decoded now would be taken; a source may use
    it to skip work. ``stop`` is set when the pipeline winds down (waits inside a source watch it)."""

    kind = "base"

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.live = spec.live
        self.rate: float | None = None  # nominal frames per second, when the source says
        self.frame_count: int | None = None  # when known up front (files)
        self.consumer_busy: Callable[[], bool] | None = None
        self.stop = threading.Event()
        self.dropped = 0  # frames the source itself dropped before decoding (packets up to a key frame)
        self.unreadable = 0  # image files skipped (not a regular file, undecodable)
        self.reconnects = 0

    @property
    def description(self) -> str:
        return f"{self.kind} {self.spec.target}"

    def open(self) -> "Source":
        return self

    def frames(self) -> Iterator[RawFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageSource(Source):
    kind = "images"

    def __init__(self, spec: SourceSpec, *, warn: Callable[[str], None] | None = None):
        super().__init__(spec)
        self.frame_count = len(spec.files)
        self.warn = warn

    @property
    def description(self) -> str:
        return f"{len(self.spec.files)} image(s) from {self.spec.target}"

    def frames(self) -> Iterator[RawFrame]:
        for i, path in enumerate(self.spec.files):
            try:
                if not os.path.isfile(path):  # a FIFO or a device named *.png would block the decoder forever
                    raise UserInputError(f"{printable_path(path)} is not a regular file")
                image = load_image(path, name=printable_path(path))
            except UserInputError as exc:  # as alexnet-predict does: report, skip, go on
                self.unreadable += 1
                if self.warn is not None:
                    self.warn(f"{exc}; skipped")
                continue
            yield RawFrame(i, None, image, name=path)


def _require_av():
    try:
        import av
    except ImportError as exc:
        if exc.name not in (None, "av"):
            raise
        raise MissingDependencyError("av", STREAM_PIP, "video files, cameras and network streams") from None
    return av


class _Feed:
    """What a reader thread hands the decoder: items in order, then the end (None, or the exception that ended
    the read). With ``backlog_s``, once the oldest queued item is older than that, the queue is dropped up to
    the newest item ``keep`` accepts (a key frame), so the decoder restarts from something it can decode.

    An item's age is ``age(item, received)`` seconds: by default since it was received; a source with a clock
    passes its timestamp's age, so a backlog that built up in the socket (a reader that got no CPU, then read
    a burst) is seen too, not only one in this queue."""

    def __init__(self, backlog_s: float | None = None, keep: Callable[[object], bool] | None = None,
                 age: Callable[[object, float], float] | None = None):
        self.backlog_s = backlog_s
        self.keep = keep
        self.age = age or (lambda item, received: time.time() - received)
        self.dropped = 0
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._resync = False  # dropping until the next item ``keep`` accepts

    def put(self, item, received: float) -> None:
        with self._cond:
            if self._resync:
                if not self.keep(item):
                    self.dropped += 1
                    return
                self._resync = False
            self._items.append((item, received))
            if self.backlog_s is not None and self.age(*self._items[0]) > self.backlog_s:
                self._drop_to_key()
            self._cond.notify_all()

    def _drop_to_key(self) -> None:
        items = list(self._items)
        keys = [i for i, (item, received) in enumerate(items)
                if self.keep(item) and self.age(item, received) <= self.backlog_s]
        if keys and keys[-1] > 0:  # restart from the newest key frame already queued (and recent enough)
            self.dropped += keys[-1]
            self._items = deque(items[keys[-1]:])
        else:  # none queued after the head: drop them all and wait for the next key frame
            self.dropped += len(items)
            self._items = deque()
            self._resync = True

    def end(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._ended, self._error = True, error
            self._cond.notify_all()

    def get(self, timeout: float | None):
        """(item, received); None at the end; raises the reader's error; TimeoutError after ``timeout`` s idle."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self._cond.wait(left if left is None else min(left, 0.5))
            return self._items.popleft()


class _ClockMap:
    """Maps a source's timestamps onto the wall clock: offset = min over items of (arrival - timestamp), the
    arrival of the least-delayed item. A frame's age is then its result time minus (timestamp + offset)."""

    def __init__(self):
        self.offset: float | None = None

    def observe(self, ts: float | None, received: float) -> None:
        if ts is None:
            return
        d = received - ts
        # an item far later than the clock says is a timestamp jump (a sender restarted, a wrap), not a delay:
        # start the clock again rather than call every following frame stale
        if self.offset is None or d < self.offset or d - self.offset > CLOCK_JUMP_S:
            self.offset = d

    def captured(self, ts: float | None) -> float | None:
        return None if ts is None or self.offset is None else ts + self.offset


class AvSource(Source):
    """Video files, V4L2 cameras and network streams through PyAV (FFmpeg's demuxers and decoders)."""

    kind = "av"

    def __init__(self, spec: SourceSpec, *, options: dict[str, str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(spec)
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self._container = None
        self._stream = None
        self._sdp: str | None = None
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()  # this source only (``stop`` may be shared with a Reopening wrapper)

    @property
    def description(self) -> str:
        what = {"video": "video file", "v4l2": "camera", "url": "stream"}[self.spec.kind]
        return f"{what} {self.spec.target}"

    def open(self) -> "AvSource":
        if self._container is not None:
            return self
        av = _require_av()
        target, options = self.spec.target, dict(self.options)
        fmt = options.pop("format", None) or self.spec.input_format  # --input-option format=mpegts works too
        if self.spec.kind == "v4l2":
            fmt = fmt or "v4l2"
        elif target.lower().startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", "tcp")  # UDP loses packets on most Wi-Fi and NATs
        elif target.lower().startswith("udp://"):
            options.setdefault("overrun_nonfatal", "1")  # a burst overflowing FFmpeg's UDP buffer is not fatal
        if self.spec.input_codec:
            target, fmt = self._write_sdp(), "sdp"
            options.setdefault("protocol_whitelist", "file,udp,rtp")
        timeout = None if self.spec.kind == "video" else (self.timeout_s, self.timeout_s)
        try:
            self._container = av.open(target, mode="r", format=fmt, options=options, timeout=timeout)
        except av.FFmpegError as exc:
            self._remove_sdp()
            raise UserInputError(f"cannot open {self.description}: {_ffmpeg_reason(exc)}{self._hint(exc)}") from None
        except OSError as exc:
            self._remove_sdp()
            raise UserInputError(f"cannot open {self.description}: {exc.strerror or exc}") from None
        except ValueError as exc:  # an unknown demuxer name
            self._remove_sdp()
            raise UserInputError(f"cannot open {self.description}: {exc}") from None
        if not self._container.streams.video:
            self.close()
            raise UserInputError(f"{self.description} has no video stream{self._hint(None)}")
        self._stream = self._container.streams.video[0]
        # frame threading decodes several frames ahead: throughput for files, latency for live sources
        self._stream.thread_type = "SLICE" if self.live else "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.rate = float(rate) if rate else None
        self.frame_count = int(self._stream.frames) if self._stream.frames and not self.live else None
        return self

    def _hint(self, exc) -> str:
        if self.spec.target.lower().startswith("rtp://") and not self.spec.input_codec:
            return (" (RTP carries no codec description: give the sender's SDP file as SOURCE, or "
                    f"--input-codec {'|'.join(sorted(RTP_CODECS))})")
        return ""

    def _write_sdp(self) -> str:
        parts = urlsplit(self.spec.target)
        name, _, pt = self.spec.input_codec.partition("/")
        payload = int(pt) if pt.isdigit() else RTP_STATIC_PT.get(name, RTP_DYNAMIC_PT)
        host = parts.hostname or "0.0.0.0"
        if not parts.port:
            raise UserInputError(f"{self.spec.target}: give the port, e.g. rtp://0.0.0.0:5004")
        ip = "IP6" if ":" in host else "IP4"
        sdp = (f"v=0\r\no=- 0 0 IN {ip} {host}\r\ns=alexnet-stream\r\nc=IN {ip} {host}\r\nt=0 0\r\n"
               f"m=video {parts.port} RTP/AVP {payload}\r\na=rtpmap:{payload} {RTP_CODECS[name]}\r\n")
        if name == "h264":
            sdp += f"a=fmtp:{payload} packetization-mode=1\r\n"
        fd, path = tempfile.mkstemp(prefix="alexnet-stream-", suffix=".sdp")
        with os.fdopen(fd, "w") as f:
            f.write(sdp)
        self._sdp = path
        return path

    def _remove_sdp(self) -> None:
        if self._sdp is not None:
            path, self._sdp = self._sdp, None
            try:
                os.unlink(path)
            except OSError:
                pass

    # reading ---------------------------------------------------------------------------------------------
    def _packets_direct(self, av) -> Iterator[tuple[object, float]]:
        for packet in self._container.demux(self._stream):
            yield packet, time.time()

    def _packets_threaded(self, av, clock: "_ClockMap") -> Iterator[tuple[object, float]]:
        def age(packet, received: float) -> float:
            captured = clock.captured(_packet_time(packet))
            return time.time() - (received if captured is None else captured)

        feed = _Feed(MAX_BACKLOG_S, keep=lambda p: p.is_keyframe, age=age)
        container, stream, closing = self._container, self._stream, self._closing

        def read():
            try:
                for packet in container.demux(stream):
                    if self.stop.is_set() or closing.is_set():
                        break
                    received = time.time()
                    clock.observe(_packet_time(packet), received)
                    feed.put(packet, received)
                feed.end()
            except BaseException as exc:  # handed to the decoder, which names the source and the reason
                feed.end(exc)

        self._reader = threading.Thread(target=read, name="stream-read", daemon=True)
        self._reader.start()
        try:
            while True:
                try:
                    item = feed.get(timeout=self.timeout_s + 1.0)  # FFmpeg's read timeout normally fires first
                except TimeoutError:
                    raise SourceError(f"no data for {self.timeout_s:g} s (--timeout)") from None
                finally:
                    self.dropped = feed.dropped
                if item is None:
                    return
                yield item
        finally:
            self.dropped = feed.dropped

    def frames(self) -> Iterator[RawFrame]:
        av = _require_av()
        self.open()
        ctx = self._stream.codec_context
        clock = _ClockMap()
        index, last_time = 0, None
        packets = self._packets_threaded(av, clock) if self.live else self._packets_direct(av)
        try:
            for packet, received in packets:
                if not self.live:
                    clock.observe(_packet_time(packet), received)
                busy = self.consumer_busy
                if self.live and busy is not None:  # nothing would take a frame now: skip what nothing refers to
                    ctx.skip_frame = "NONREF" if busy() else "DEFAULT"
                t0 = time.perf_counter()
                decoded = packet.decode()
                spent = (time.perf_counter() - t0) / max(1, len(decoded))
                for frame in decoded:
                    raw = self._raw(frame, index, clock)
                    raw.decode_s = spent
                    yield raw
                    index += 1
                    last_time = frame.time if frame.time is not None else last_time
            ctx.skip_frame = "DEFAULT"
            try:
                delayed = ctx.decode(None)  # the decoder's delayed frames, unless the demuxer's last packet flushed
            except av.EOFError:
                delayed = []
            for frame in delayed:
                yield self._raw(frame, index, clock)
                index += 1
                last_time = frame.time if frame.time is not None else last_time
        except SourceError as exc:
            raise SourceError(f"{self.description} broke off after {index} frame(s): {exc}") from None
        except av.FFmpegError as exc:
            raise SourceError(f"{self.description} broke off after {index} frame(s): {self._reason(exc)}") from None
        except OSError as exc:
            raise SourceError(f"{self.description} broke off after {index} frame(s): {exc.strerror or exc}") from None
        if self.stop.is_set():
            return
        if self.live:  # a live source has no end: a server that hangs up or a camera that stops is a break
            what = "the camera stopped delivering frames" if self.spec.kind == "v4l2" else "the stream ended"
            raise SourceError(f"{self.description} broke off after {index} frame(s): {what} "
                              "(end of stream from a live source)")
        missing = self._truncated(index, last_time)
        if missing:
            raise SourceError(f"{self.description} is truncated: {missing}")

    def _raw(self, frame, index: int, clock: _ClockMap) -> RawFrame:
        t = frame.time
        return RawFrame(index, t, convert=frame.to_image, captured=clock.captured(t) if self.live else None)

    def _reason(self, exc) -> str:
        av = _require_av()
        if isinstance(exc, av.ExitError) or "Immediate exit" in str(exc):  # FFmpeg's read timeout callback
            return f"no data for {self.timeout_s:g} s (--timeout)"
        if isinstance(exc, av.EOFError):
            return "the connection was closed"
        return _ffmpeg_reason(exc)

    def _truncated(self, got: int, last_time: float | None) -> str | None:
        """Why a file that ended cleanly still ended early (its header announces more), or None."""
        stream = self._stream
        expected = int(stream.frames or 0)
        if expected and got < expected - max(1, expected // 100):
            return f"{got} of the {expected} frames its header announces"
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            start = stream.start_time or 0
            duration = float((start + stream.duration) * stream.time_base)
        elif self._container.duration is not None and len(self._container.streams) == 1:
            duration = self._container.duration / 1e6
        if duration and self.rate and last_time is not None:
            slack = max(3.0 / self.rate, 0.25)
            if last_time + slack < duration:
                return f"frames end at {last_time:.2f} s of the {duration:.2f} s its header announces"
        if duration and got == 0:
            return f"no frame decoded of the {duration:.2f} s its header announces"
        return None

    def close(self) -> None:
        self._closing.set()
        if self._container is not None:
            container, self._container = self._container, None
            reader = self._reader
            if reader is not None and reader.is_alive():
                reader.join(timeout=self.timeout_s + 1.0)  # it ends at the next packet or FFmpeg's timeout
                if reader.is_alive():  # still inside a read: closing under it would crash; leave it to exit
                    self._remove_sdp()
                    return
            container.close()
        self._remove_sdp()


def _packet_time(packet) -> float | None:
    if packet.pts is None or packet.time_base is None:
        return None
    return float(packet.pts * packet.time_base)


def _ffmpeg_reason(exc) -> str:
    return str(getattr(exc, "strerror", None) or exc).rstrip(".")


def gstreamer_status(cv2) -> str | None:
    """None when this OpenCV can open GStreamer pipelines, else why not (from ``cv2.getBuildInformation()``)."""
    info = cv2.getBuildInformation()
    m = re.search(r"^\s*GStreamer:\s*(.+)$", info, re.MULTILINE)
    if not m:
        return f"this OpenCV ({cv2.__version__}) was built without GStreamer"
    if not m.group(1).strip().upper().startswith("YES"):
        return f"this OpenCV ({cv2.__version__}) was built without GStreamer (GStreamer: {m.group(1).strip()})"
    return None


def csi_pipeline(url: str) -> str:
    """``csi://N[?width=&height=&fps=&flip=]`` -> the nvarguscamerasrc pipeline JetPack's samples use."""
    parts = urlsplit(url)
    sensor = parts.netloc or parts.path.strip("/")
    if not sensor.isdigit():
        raise UserInputError(f"{url}: expected csi://N with N the sensor id (csi://0, csi://1)")
    params = dict(CSI_DEFAULTS)
    for key, values in parse_qs(parts.query).items():
        if key not in params:
            raise UserInputError(f"{url}: unknown parameter {key!r}; known: {', '.join(params)}")
        try:
            params[key] = int(values[-1])
        except ValueError:
            raise UserInputError(f"{url}: {key} must be an integer, got {values[-1]!r}") from None
    return (f"nvarguscamerasrc sensor-id={int(sensor)} ! "
            f"video/x-raw(memory:NVMM),width={params['width']},height={params['height']},"
            f"framerate={params['fps']}/1,format=NV12 ! nvvidconv flip-method={params['flip']} ! "
            "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")


def pipeline_elements(pipeline: str) -> list[str]:
    """The element factory names in a gst-launch description (caps, pad references and properties left out)."""
    names = []
    for segment in re.split(r"\s!\s|^!\s|\s!$", f" {pipeline} "):
        words = segment.split()
        if not words:
            continue
        first = words[0]
        if "/" in first or first.endswith(".") or "=" in first or first.startswith(("(", '"', "'")):
            continue  # caps (video/x-raw,...), a pad reference (t.), a property
        if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", first):
            names.append(first)
    return names


def missing_gst_elements(names: Sequence[str]) -> list[str] | None:
    """Which of ``names`` this machine's GStreamer lacks (PyGObject, else gst-inspect-1.0); None: cannot tell."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        return [n for n in names if Gst.ElementFactory.find(n) is None]
    except (ImportError, ValueError):
        pass
    except Exception:  # noqa: BLE001 - a broken PyGObject: fall back to the command-line tool
        pass
    tool = shutil.which("gst-inspect-1.0")
    if tool is None:
        return None
    missing = []
    for name in names:
        try:
            r = subprocess.run([tool, "--exists", name], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:
            missing.append(name)
    return missing


class GStreamerSource(Source):
    """A GStreamer pipeline (raw, or built from ``csi://N``) through OpenCV's GStreamer backend.

    The pipeline starts and is read on a worker thread: a camera whose daemon never answers (nvargus without a
    sensor) or a pipeline that stalls ends after ``timeout_s`` with one line instead of hanging the command."""

    kind = "gstreamer"

    def __init__(self, spec: SourceSpec, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(spec)
        self.pipeline = csi_pipeline(spec.target) if spec.kind == "csi" else spec.target
        if "appsink" not in self.pipeline:
            self.pipeline += " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2"
        self.timeout_s = timeout_s
        self._cap = None
        self._cv2 = None
        self._feed: _Feed | None = None
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def description(self) -> str:
        return f"CSI camera {self.spec.target}" if self.spec.kind == "csi" else "GStreamer pipeline"

    def preflight(self):
        """OpenCV with GStreamer (cheap: checked before the model loads). Returns cv2."""
        what = "csi:// cameras" if self.spec.kind == "csi" else "GStreamer pipelines"
        try:
            import cv2
        except ImportError:
            raise UserInputError(
                f"{what} need OpenCV built with GStreamer (JetPack's python3-opencv; pip's opencv-python has no "
                "GStreamer), and cv2 is not importable here") from None
        why = gstreamer_status(cv2)
        if why:
            raise UserInputError(f"{what} need OpenCV built with GStreamer (as JetPack ships it): {why}")
        return cv2

    def _missing(self) -> str:
        """Why a pipeline that failed to start failed, when an element of it is not installed ('' if none is)."""
        missing = missing_gst_elements(pipeline_elements(self.pipeline))
        if not missing:
            return ""
        hint = (" (it comes with JetPack's nvidia-l4t-gstreamer: is this a Jetson?)"
                if "nvarguscamerasrc" in missing or "nvvidconv" in missing else "")
        return f": GStreamer element(s) {', '.join(missing)} not installed on this machine{hint}"

    def open(self) -> "GStreamerSource":
        if self._cap is not None:
            return self
        cv2 = self.preflight()
        result: dict = {}

        def start():
            try:
                result["cap"] = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
            except BaseException as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        worker = threading.Thread(target=start, name="stream-gst-open", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():  # left behind: OpenCV gives no way to cancel a pipeline that is still starting
            why = self._missing() or f": {self.pipeline}"
            raise SourceError(f"{self.description} did not start within {self.timeout_s:g} s (--timeout){why}")
        if "error" in result:
            raise UserInputError(f"GStreamer could not start {self.description}{self._missing()}: {result['error']}")
        cap = result["cap"]
        if not cap.isOpened():
            cap.release()
            why = self._missing()
            if why:
                raise UserInputError(f"{self.description} cannot start{why}")
            hint = ("is nvargus-daemon running and the sensor connected?" if self.spec.kind == "csi"
                    else "run it with gst-launch-1.0 to see why")
            raise UserInputError(f"GStreamer could not start {self.description} ({hint}): {self.pipeline}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.rate = float(fps) if fps and fps > 0 else None
        self._cap, self._cv2 = cap, cv2
        return self

    def _read_all(self, cap, cv2, feed: _Feed) -> None:
        try:
            while not (self.stop.is_set() or self._closing.is_set()):
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                msec = cap.get(cv2.CAP_PROP_POS_MSEC)
                feed.put((bgr, msec / 1000.0 if msec and msec > 0 else None), time.time())
            feed.end()
        except BaseException as exc:  # noqa: BLE001 - handed to frames()
            feed.end(exc)

    def frames(self) -> Iterator[RawFrame]:
        self.open()
        feed = self._feed = _Feed(MAX_BACKLOG_S if self.live else None, keep=lambda item: True)
        self._reader = threading.Thread(target=self._read_all, args=(self._cap, self._cv2, feed),
                                        name="stream-gst-read", daemon=True)
        self._reader.start()
        clock, index = _ClockMap(), 0
        while True:
            try:
                item = feed.get(timeout=self.timeout_s)
            except TimeoutError:
                raise SourceError(f"{self.description} broke off after {index} frame(s): no frame for "
                                  f"{self.timeout_s:g} s (--timeout)") from None
            except Exception as exc:  # noqa: BLE001 - OpenCV's errors
                raise SourceError(f"{self.description} broke off after {index} frame(s): {exc}") from None
            finally:
                self.dropped = feed.dropped
            if item is None:
                break
            (bgr, ts), received = item
            clock.observe(ts, received)
            yield RawFrame(index, ts, convert=lambda bgr=bgr: _bgr_to_image(bgr),
                           captured=clock.captured(ts) if ts is not None else received)
            index += 1
        if self.live and not self.stop.is_set():
            raise SourceError(f"{self.description} broke off after {index} frame(s): the pipeline ended "
                              "(end of stream from a live source; --no-live if it is finite)")

    def close(self) -> None:
        self._closing.set()
        if self._cap is not None:
            cap, self._cap = self._cap, None
            reader = self._reader
            if reader is not None and reader.is_alive():
                reader.join(timeout=1.0)
                if reader.is_alive():  # stuck in a read: releasing under it is unsafe; the process exit ends it
                    return
            cap.release()


def _bgr_to_image(bgr) -> Image.Image:
    if bgr.ndim == 2:
        return Image.fromarray(bgr).convert("RGB")
    return Image.fromarray(bgr[:, :, 2::-1].copy())  # BGR(A) -> RGB


class Reopening(Source):
    """Wraps another source: on a break (:class:`SourceError`), reopen it up to ``reconnect`` times in a row
    (-1: forever) ``delay_s`` apart; ``loop`` replays a file from the start at its end (-1: forever). Frame
    indices and timestamps continue across the seams, so the JSON lines and the output video are one run."""

    def __init__(self, make: Callable[[], Source], spec: SourceSpec, *, reconnect: int = 0, delay_s: float = 1.0,
                 loop: int = 0, warn: Callable[[str], None] | None = None):
        super().__init__(spec)
        self._make = make
        self.inner = make()
        self.reconnect = reconnect
        self.delay_s = delay_s
        self.loop = loop
        self.loops = 0
        self.warn = warn
        self._dropped_before = 0

    @property
    def description(self) -> str:
        return self.inner.description

    def _sync(self) -> None:
        self.rate = self.inner.rate if self.rate is None else self.rate
        self.frame_count = None if self.loop else self.inner.frame_count
        self.inner.consumer_busy = self.consumer_busy
        self.inner.stop = self.stop

    def open(self) -> "Reopening":
        self.inner.stop = self.stop
        try:
            self.inner.open()
        except UserInputError as exc:
            if not self.reconnect:
                raise
            self._retry(exc)
        self._sync()
        return self

    def _retry(self, exc: Exception) -> None:
        """Reopen until it works, the attempts are used up (raise), or the pipeline stops (return)."""
        attempts, last = 0, exc
        while self.reconnect < 0 or attempts < self.reconnect:
            attempts += 1
            if self.warn is not None:
                self.warn(f"{self.inner.description}: {last}; reconnecting in {self.delay_s:g} s "
                          f"(attempt {attempts}{'' if self.reconnect < 0 else f' of {self.reconnect}'})")
            if self.stop.wait(self.delay_s):
                return
            self.inner.close()
            self._dropped_before += self.inner.dropped
            self.inner = self._make()
            self.inner.stop = self.stop
            try:
                self.inner.open()
                return
            except UserInputError as again:
                last = again
        raise SourceError(f"{last} (gave up after {attempts} reconnect attempt(s), --reconnect {self.reconnect})")

    def frames(self) -> Iterator[RawFrame]:
        self.open()
        index, shift, last_time = 0, 0.0, None
        period = 1.0 / self.rate if self.rate else 1.0 / 30
        first_of_segment = True
        seam_wall = None
        while True:
            self._sync()
            try:
                for raw in self.inner.frames():
                    if first_of_segment and raw.time is not None and last_time is not None:
                        gap = period if seam_wall is None else max(period, time.monotonic() - seam_wall)
                        shift = last_time + gap - raw.time
                    first_of_segment = False
                    raw.index = index
                    index += 1
                    if raw.time is not None:
                        raw.time += shift
                        last_time = raw.time
                    self.dropped = self._dropped_before + self.inner.dropped
                    yield raw
            except SourceError as exc:
                self.dropped = self._dropped_before + self.inner.dropped
                if not self.reconnect or self.stop.is_set():
                    raise
                seam_wall = time.monotonic()
                self._retry(exc)
                if self.stop.is_set():
                    return
                self.reconnects += 1
                first_of_segment = True
                continue
            self.dropped = self._dropped_before + self.inner.dropped
            if self.stop.is_set() or not (self.loop < 0 or self.loops < self.loop):
                return
            self.loops += 1
            self.inner.close()
            self._dropped_before += self.inner.dropped
            self.inner = self._make()
            self.inner.stop = self.stop
            self.inner.open()
            seam_wall, first_of_segment = None, True

    def close(self) -> None:
        self.inner.close()


def create_source(spec: SourceSpec, *, options: dict[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  reconnect: int = 0, reconnect_delay_s: float = 1.0, loop: int = 0,
                  warn: Callable[[str], None] | None = None) -> Source:
    """A :class:`Source` for ``spec``, not yet opened (the pipeline opens it once the model is warm)."""
    if spec.kind == "images":
        if options:
            raise UserInputError("--input-option applies to video files, cameras and streams, not to images")
        if reconnect:
            raise UserInputError(f"--reconnect applies to network streams and cameras, not to images ({spec.target})")
        if loop:
            raise UserInputError("--loop applies to video files, not to images")
        return ImageSource(spec, warn=warn)
    if reconnect and not spec.reconnectable:
        raise UserInputError(f"--reconnect applies to network streams and cameras; {spec.target} is a "
                             f"{'video file (--loop replays it)' if spec.kind == 'video' else spec.kind}")
    if loop and spec.kind != "video":
        raise UserInputError(f"--loop applies to video files; {spec.target} is a live source (--reconnect)")
    if spec.kind in ("csi", "gstreamer"):
        if options:
            raise UserInputError("--input-option applies to PyAV sources; put GStreamer options in the pipeline")

        def make() -> Source:
            return GStreamerSource(spec, timeout_s=timeout_s)

        make().preflight()  # no OpenCV, no GStreamer in it, a missing element: say so before the model loads
    else:
        def make() -> Source:
            return AvSource(spec, options=options, timeout_s=timeout_s)
    if reconnect or loop:
        return Reopening(make, spec, reconnect=reconnect, delay_s=reconnect_delay_s, loop=loop, warn=warn)
    return make()


def open_source(spec: SourceSpec, *, options: dict[str, str] | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Source:
    """An opened :class:`Source` for ``spec`` (errors opening it are one line)."""
    return create_source(spec, options=options, timeout_s=timeout_s).open()
