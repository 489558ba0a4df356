"""Outputs of a stream: JSON lines (one per frame) and the annotated video (PyAV encoder, finalized on stop).

``--output`` takes what jetson-inference's ``videoOutput`` takes, all through FFmpeg's own muxers (PyAV):

==========================  ==========================================================================
``clip.mp4`` ``.mkv`` ...   a video file, encoded into a temporary file beside the destination and renamed
                            over it only once the encoder is flushed and the container closed, so a crash or
                            a kill never leaves a half-written file under the destination's name; a run that
                            wrote no frame leaves nothing
``frames/%05d.jpg``         an image sequence (FFmpeg's ``image2`` muxer; ``.jpg`` ``.jpeg`` ``.png``), each
                            file written atomically; refused when files of that pattern already exist (old
                            and new frames would mix)
``rtsp://host:port/path``   published to an RTSP server (FFmpeg's ``rtsp`` muxer: ANNOUNCE / RECORD), H.264
``rtp://host:port``         RTP carrying MPEG-TS (payload type 33, RFC 2250): receivers need no SDP file
``udp://host:port``         MPEG-TS over UDP (7 TS packets per datagram)
==========================  ==========================================================================

Encoders: libx264 where FFmpeg has it (files: CRF 23; network outputs: zero-latency tuning, a key frame every
2 s, 4 Mbit/s), else mpeg4. ``--encoder`` picks another one FFmpeg has, hardware ones included
(``h264_nvenc``, ``h264_v4l2m2m``); ``--bitrate`` and ``--encoder-option KEY=VALUE`` tune it. Every output is
checked before any work (:func:`check_output`): the encoder is opened once at a trial size (a hardware encoder
without its device is one line), a file's folder must be writable, an RTSP server must accept a connection and
a host name must resolve.
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from PIL import Image, ImageOps

from alexnet_deploy.errors import AlexnetDeployError, UserInputError
from alexnet_deploy.fileio import check_writable, printable_path

# output suffix -> (FFmpeg muxer, encoders to try in order)
CONTAINERS = {
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "ffv1", "mpeg4")),
    ".avi": ("avi", ("mpeg4", "libx264")),
    ".ts": ("mpegts", ("libx264", "mpeg4")),
}
IMAGE_ENCODERS = {".jpg": "mjpeg", ".jpeg": "mjpeg", ".png": "png"}
# network scheme -> (FFmpeg muxer, encoders to try in order)
NETWORK = {
    "rtsp": ("rtsp", ("libx264", "mpeg4")),
    "rtsps": ("rtsp", ("libx264", "mpeg4")),
    "rtp": ("rtp_mpegts", ("libx264", "mpeg4")),
    "udp": ("mpegts", ("libx264", "mpeg4")),
}
HARDWARE_ENCODERS = {
    "h264_nvenc": "an NVIDIA GPU with NVENC and its driver (libcuda, libnvidia-encode)",
    "hevc_nvenc": "an NVIDIA GPU with NVENC and its driver (libcuda, libnvidia-encode)",
    "h264_v4l2m2m": "a V4L2 memory-to-memory encoder device (/dev/video*)",
    "hevc_v4l2m2m": "a V4L2 memory-to-memory encoder device (/dev/video*)",
    "h264_vaapi": "a VA-API device (/dev/dri/renderD*)",
    "h264_qsv": "an Intel GPU with Quick Sync",
}
# Encoder settings: x264's default quality at a speed that keeps up with a camera on a small CPU.
ENCODER_OPTIONS = {"libx264": {"crf": "23", "preset": "veryfast"}, "mpeg4": {"qscale": "3"}, "ffv1": {},
                   "mjpeg": {}, "png": {}}
# Network outputs: no B-frames or lookahead (every frame leaves at once), a key frame every KEYFRAME_S so a
# receiver that joins late waits at most that long, and a bit rate a link can plan for.
NETWORK_OPTIONS = {"libx264": {"preset": "veryfast", "tune": "zerolatency"}, "mpeg4": {},
                   "h264_nvenc": {"preset": "p4", "tune": "ll"}}
KEYFRAME_S = 2.0
NETWORK_BITRATE = 4_000_000  # jetson-inference's videoOutput default
HARDWARE_BITS_PER_PIXEL = 0.1  # files through a hardware encoder without --bitrate: w x h x fps x this
PIX_FMT = {"libx264": "yuv420p", "mpeg4": "yuv420p", "ffv1": "yuv420p", "mjpeg": "yuvj420p", "png": "rgb24"}
TIME_BASE = Fraction(1, 1000)  # frames carry their source's timestamps in milliseconds (variable frame rate)
DEFAULT_FPS = 30.0
TRIAL_SIZE = (640, 480)  # the encoder is opened once at this size before any work
CONNECT_TIMEOUT_S = 5.0
UDP_PACKET = 1316  # 7 x 188-byte TS packets: what MPEG-TS receivers (VLC, GStreamer, set-top boxes) expect
_PATTERN = re.compile(r"%(0?\d*)d")


@dataclass
class OutputSpec:
    """What an ``--output`` names. ``kind``: file | images | rtsp | rtp | udp."""

    kind: str
    target: str
    muxer: str
    encoders: tuple[str, ...]
    url: str = ""  # what FFmpeg opens (network outputs: with protocol options added)
    options: dict = field(default_factory=dict)  # muxer / protocol options

    @property
    def network(self) -> bool:
        return self.kind in ("rtsp", "rtp", "udp")


def parse_output(target: str | os.PathLike) -> OutputSpec:
    """Classify an ``--output`` value; one line for what it cannot be."""
    text = os.fspath(target)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme not in NETWORK:
            raise UserInputError(f"--output {text}: unsupported scheme {scheme}://; use a file, an image pattern "
                                 "(frames/%05d.jpg), rtsp://host:port/path, rtp://host:port or udp://host:port")
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port is None or port <= 0:
            raise UserInputError(f"--output {text}: expected {scheme}://host:port"
                                 f"{'/path' if scheme.startswith('rtsp') else ''} with a host and a port")
        muxer, encoders = NETWORK[scheme]
        kind = "rtsp" if scheme.startswith("rtsp") else scheme
        url, options = text, {}
        if kind == "rtsp":
            options["rtsp_transport"] = "tcp"  # no UDP port pairs to open through firewalls; FFmpeg's default
        elif kind == "udp" and "pkt_size=" not in parts.query:
            url = text + ("&" if parts.query else "?") + f"pkt_size={UDP_PACKET}"
        return OutputSpec(kind, text, muxer, encoders, url, options)
    suffix = Path(text).suffix.lower()
    if _PATTERN.search(Path(text).name):
        if suffix not in IMAGE_ENCODERS:
            raise UserInputError(f"--output {text}: an image sequence needs one of "
                                 f"{', '.join(IMAGE_ENCODERS)} (e.g. frames/%05d.jpg)")
        return OutputSpec("images", text, "image2", (IMAGE_ENCODERS[suffix],), text)
    if suffix in IMAGE_ENCODERS:
        raise UserInputError(f"--output {text}: one image cannot hold a stream; give a numbered pattern such as "
                             f"{Path(text).with_name(Path(text).stem + '_%05d' + suffix)}")
    if suffix not in CONTAINERS:
        raise UserInputError(f"--output {text}: unsupported video suffix {suffix or '(none)'}; "
                             f"use one of {', '.join(CONTAINERS)}, an image pattern (frames/%05d.jpg) "
                             "or rtsp:// rtp:// udp://")
    muxer, encoders = CONTAINERS[suffix]
    return OutputSpec("file", text, muxer, encoders, text)


def container_for(path: str | os.PathLike, codec: str | None = None) -> tuple[str, str]:
    """(muxer, encoder) for an output; one-line errors for unknown kinds and encoders (no I/O)."""
    spec = parse_output(path)
    return spec.muxer, _choose_encoder(spec, codec)


def _choose_encoder(spec: OutputSpec, codec: str | None) -> str:
    from alexnet_deploy.deps import require

    available = require("av").codecs_available
    if codec is not None:
        if codec not in available:
            hint = (" (PyAV's wheels bring their own FFmpeg; one built against the system's: "
                    "pip install av --no-binary av)") if codec in HARDWARE_ENCODERS else ""
            raise UserInputError(f"--encoder {codec}: this FFmpeg (PyAV) has no such encoder{hint}")
        if spec.kind == "images" and codec not in ("mjpeg", "png"):
            raise UserInputError(f"--encoder {codec}: an image sequence is written with "
                                 f"{spec.encoders[0]} (from the suffix of {spec.target})")
        return codec
    for name in spec.encoders:
        if name in available:
            return name
    raise UserInputError(f"--output {spec.target}: none of the encoders {', '.join(spec.encoders)} "
                         "is in this FFmpeg build")


def parse_bitrate(text: str | int | None) -> int | None:
    """'4M', '800k', '2500000' -> bits per second (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bps|bit/s|b)?\s*", str(text))
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()] if m else 0
    if not m or value < 1000:
        raise UserInputError(f"--bitrate {text}: expected bits per second such as 4M, 800k or 2500000 (>= 1k)")
    return int(value)


def _encoder_settings(spec: OutputSpec, codec: str, size: tuple[int, int], fps: float, bitrate: int | None,
                      encoder_options: Mapping[str, str] | None) -> tuple[dict, int | None]:
    """(private encoder options, bit rate or None) for one output."""
    if spec.network:
        options = dict(NETWORK_OPTIONS.get(codec, {}))
        options.setdefault("g", str(max(1, round(KEYFRAME_S * fps))))
        if codec == "libx264":
            options["bf"] = "0"
        bitrate = bitrate or NETWORK_BITRATE
    else:
        options = dict(ENCODER_OPTIONS.get(codec, {}))
        if bitrate:  # a bit rate replaces the constant-quality defaults
            options.pop("crf", None)
            options.pop("qscale", None)
        elif codec in HARDWARE_ENCODERS:
            bitrate = int(size[0] * size[1] * fps * HARDWARE_BITS_PER_PIXEL)
    if spec.kind == "images":
        bitrate = None
        if codec == "mjpeg":
            options.setdefault("qscale", "2")
    options.update(encoder_options or {})
    return options, bitrate


def _configure(ctx, codec: str, size: tuple[int, int], fps: float, options: dict, bitrate: int | None) -> None:
    ctx.width, ctx.height = size
    ctx.pix_fmt = PIX_FMT.get(codec, "yuv420p")
    ctx.time_base = TIME_BASE
    ctx.framerate = Fraction(fps).limit_denominator(1001)
    if bitrate:
        ctx.bit_rate = bitrate
    qscale = options.pop("qscale", None)  # FFmpeg's -q:v is a codec-context setting, not a private option
    if qscale is not None:
        try:
            ctx.qscale = int(float(qscale))
        except ValueError:
            raise UserInputError(f"--encoder-option qscale={qscale}: expected a number") from None
    ctx.options = options


def check_output(target: str | os.PathLike, codec: str | None = None, *, bitrate: str | int | None = None,
                 encoder_options: Mapping[str, str] | None = None, fps: float | None = None,
                 connect: bool = True) -> OutputSpec:
    """Everything that can be checked about an output before any work, one line per problem: its kind, the
    encoder (opened once at a trial size, so a hardware encoder without its device or a bad option value is
    reported now), a file's folder, an image pattern's existing files, an RTSP server's port, a host name."""
    spec = parse_output(target)
    codec = _choose_encoder(spec, codec)
    fps = fps if fps and fps > 0 else DEFAULT_FPS
    options, rate = _encoder_settings(spec, codec, TRIAL_SIZE, fps, parse_bitrate(bitrate), encoder_options)
    _trial_open(spec, codec, fps, options, rate)
    if spec.kind == "file":
        check_writable(spec.target)
    elif spec.kind == "images":
        _check_pattern(spec.target)
    elif connect:
        _check_reachable(spec)
    return spec


def _trial_open(spec: OutputSpec, codec: str, fps: float, options: dict, bitrate: int | None) -> None:
    from alexnet_deploy.deps import require

    av = require("av")
    ctx = av.CodecContext.create(codec, "w")
    _configure(ctx, codec, TRIAL_SIZE, fps, dict(options), bitrate)
    try:
        ctx.open()
    except (av.FFmpegError, OSError, ValueError) as exc:
        need = HARDWARE_ENCODERS.get(codec)
        why = _reason(exc)
        if need:
            raise UserInputError(f"--encoder {codec}: this FFmpeg has it, but it cannot be opened here ({why}); "
                                 f"it needs {need}") from None
        raise UserInputError(f"--encoder {codec}: cannot be opened with options "
                             f"{_format_options(options, bitrate)} ({why})") from None


def _format_options(options: dict, bitrate: int | None) -> str:
    items = [f"{k}={v}" for k, v in options.items()] + ([f"bitrate={bitrate}"] if bitrate else [])
    return " ".join(items) or "(none)"


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__


def _pattern_glob(pattern: str) -> tuple[str, re.Pattern]:
    name = Path(pattern).name
    regex = re.compile("^" + _PATTERN.sub(r"\\d+", re.escape(name)) + "$")
    return str(Path(pattern).with_name(_PATTERN.sub("*", name))), regex


def _check_pattern(pattern: str) -> None:
    folder = Path(pattern).parent
    check_writable(folder / "probe")  # creates the folder, says so when it cannot
    if len(_PATTERN.findall(Path(pattern).name)) != 1 or "%" in _PATTERN.sub("", Path(pattern).name):
        raise UserInputError(f"--output {pattern}: an image pattern has one number field (%d or %05d) "
                             "and no other %")
    if any(c in str(folder) for c in "%"):
        raise UserInputError(f"--output {pattern}: the number field belongs in the file name, not the folder")
    found = _existing_frames(pattern)
    if found:
        raise UserInputError(f"--output {pattern}: {printable_path(found[0])} and {len(found) - 1} more files of "
                             "this pattern exist; old and new frames would mix: remove them or choose another "
                             "pattern")


def _existing_frames(pattern: str) -> list[str]:
    wildcard, regex = _pattern_glob(pattern)
    return sorted(p for p in glob.glob(glob.escape(str(Path(wildcard).parent)) + os.sep + Path(wildcard).name)
                  if regex.match(Path(p).name))


def _check_reachable(spec: OutputSpec) -> None:
    parts = urlsplit(spec.target)
    try:
        addresses = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserInputError(f"--output {spec.target}: cannot resolve {parts.hostname} ({exc.strerror})") from None
    if spec.kind != "rtsp":
        return  # UDP and RTP are sent whether anybody listens or not, as broadcasters do
    family, kind, proto, _, address = addresses[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(address)
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise UserInputError(f"--output {spec.target}: no RTSP server to publish to at {parts.hostname}:"
                             f"{parts.port} ({why}); start one that accepts publishing (RECORD), e.g. "
                             "mediamtx") from None


class VideoSink:
    """Writes annotated frames to ``target``: a video file (through a temporary file renamed on :meth:`close`),
    an image sequence, or an RTSP / RTP / UDP stream. Checked on construction (:func:`check_output`); the
    container opens on the first frame, when its size is known."""

    def __init__(self, path: str | os.PathLike, *, fps: float | None = None, codec: str | None = None,
                 bitrate: str | int | None = None, encoder_options: Mapping[str, str] | None = None,
                 connect: bool = True):
        self.target = os.fspath(path)
        self.fps = fps if fps and fps > 0 else DEFAULT_FPS
        self.bitrate = parse_bitrate(bitrate)
        self.encoder_options = dict(encoder_options or {})
        self.spec = check_output(self.target, codec, bitrate=self.bitrate, encoder_options=self.encoder_options,
                                 fps=self.fps, connect=connect)
        self.kind, self.muxer = self.spec.kind, self.spec.muxer
        self.codec = _choose_encoder(self.spec, codec)
        self.frames = 0
        self.tmp_path: Path | None = None
        self.path: Path | None = None
        if self.kind == "file":
            self.path = Path(self.target)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".tmp{self.path.suffix}",
                                           dir=self.path.parent)
            except OSError as exc:
                raise UserInputError(f"cannot write into {self.path.parent}: {exc.strerror}") from None
            os.close(fd)
            self.tmp_path = Path(tmp)
        self._closed = False
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._t0: float | None = None

    @property
    def pending(self) -> bool:
        """True until :meth:`close` ran (a caller that never started the pipeline closes with ``keep=False``)."""
        return not self._closed

    def describe(self) -> str:
        """What was written, for the summary line."""
        what = {"file": "annotated video", "images": "annotated frames", "rtsp": "published (RTSP)",
                "rtp": "streamed (RTP/MPEG-TS)", "udp": "streamed (UDP/MPEG-TS)"}[self.kind]
        return f"{what}: {self.target} ({self.frames} frames, {self.codec})"

    def _fail(self, action: str, exc: BaseException) -> AlexnetDeployError:
        why = _reason(exc)
        if self.spec.network:
            return AlexnetDeployError(f"--output {self.target}: {action} failed ({why})")
        return AlexnetDeployError(f"--output {self.target}: cannot write ({why})")

    def _open(self, size: tuple[int, int]) -> None:
        from alexnet_deploy.deps import require

        av = require("av")
        even = self.codec not in ("png", "ffv1")
        w, h = (size[0] + size[0] % 2, size[1] + size[1] % 2) if even else size  # 4:2:0 needs even sizes
        self._size = (w, h)
        options, rate = _encoder_settings(self.spec, self.codec, (w, h), self.fps, self.bitrate,
                                          self.encoder_options)
        muxer_options = dict(self.spec.options)
        if self.kind == "images":
            muxer_options["atomic_writing"] = "1"
        destination = str(self.tmp_path) if self.kind == "file" else self.spec.url
        try:
            self._container = av.open(destination, mode="w", format=self.muxer, options=muxer_options)
            stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
            _configure(stream.codec_context, self.codec, (w, h), self.fps, options, rate)
            self._stream = stream
            if self.spec.network:
                self._container.start_encoding()  # connect / ANNOUNCE now: a refusal names the server
        except (av.FFmpegError, OSError) as exc:
            container, self._container = self._container, None
            if container is not None:
                try:
                    container.close()
                except (av.FFmpegError, OSError):
                    pass
            raise self._fail("opening the stream", exc) from None

    def write(self, image: Image.Image, time_s: float | None) -> None:
        """Encode one frame shown at ``time_s`` seconds (source time; None: the next slot at ``fps``)."""
        from alexnet_deploy.deps import require

        av = require("av")
        if self._container is None:
            self._open(image.size)
        if image.size != self._size:
            if abs(image.size[0] - self._size[0]) <= 1 and abs(image.size[1] - self._size[1]) <= 1:
                image = image.crop((0, 0, *self._size))  # odd -> even: one black row/column
            else:  # an image folder with mixed sizes: letterbox into the first frame's size
                image = ImageOps.pad(image, self._size, color=(0, 0, 0))
        if time_s is None:
            pts = self._last_pts + max(1, round(1000 / self.fps))
        else:
            if self._t0 is None:
                self._t0 = time_s
            pts = round((time_s - self._t0) * 1000)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the source's clock did
        frame = av.VideoFrame.from_image(image)
        frame.pts, frame.time_base = pts, TIME_BASE
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise self._fail("sending", exc) from None
        self._last_pts = pts
        self.frames += 1

    def close(self, keep: bool = True) -> bool:
        """Flush the encoder and close the container. A file is renamed over ``path`` when ``keep`` and a frame
        was written, and its temporary file never survives this call; an image sequence that is not kept is
        removed again (only the frames this sink wrote). Returns whether the output was kept."""
        from alexnet_deploy.deps import require

        kept, error = False, None
        self._closed = True
        try:
            if self._container is not None:
                av = require("av")
                container, self._container = self._container, None
                try:
                    if keep:
                        for packet in self._stream.encode():  # flush delayed frames (B-frames, lookahead)
                            container.mux(packet)
                except (av.FFmpegError, OSError) as exc:
                    error = self._fail("finishing", exc)
                finally:
                    try:
                        container.close()
                    except (av.FFmpegError, OSError) as exc:
                        error = error or self._fail("closing", exc)
            if error is None and keep and self.frames > 0:
                if self.kind == "file":
                    mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o666 & ~_umask()
                    os.chmod(self.tmp_path, mode)
                    os.replace(self.tmp_path, self.path)
                kept = True
            elif self.kind == "images":
                for name in _existing_frames(self.target)[: self.frames]:
                    Path(name).unlink(missing_ok=True)
        finally:
            if self.tmp_path is not None and self.tmp_path.exists():
                self.tmp_path.unlink()
        if error is not None and keep:
            raise error  # a file that could not be finished (disk full), a server gone at the end
        return kept


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class JsonLinesSink:
    """One JSON object per frame, flushed per line (``tail -f`` works); ``-`` is stdout."""

    def __init__(self, path: str | os.PathLike):
        self.to_stdout = os.fspath(path) == "-"
        if self.to_stdout:
            self._file = sys.stdout
        else:
            check_writable(path)
            try:
                self._file = open(path, "w", encoding="utf-8")
            except OSError as exc:
                raise UserInputError(f"cannot write {path}: {exc.strerror}") from None
        self.closed_by_reader = False

    def write(self, record: dict) -> bool:
        """Write one line; False once the reader has gone (``| head``): the stream should stop."""
        if self.closed_by_reader:
            return False
        try:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
            return True
        except BrokenPipeError:
            self.closed_by_reader = True
            if self.to_stdout:  # keep Python's exit-time flush of stdout from failing again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            return False

    def close(self) -> None:
        if not self.to_stdout:
            self._file.close()
