"""Frame sources: image files / folders / globs, video files, V4L2 cameras, network streams (PyAV), and
GStreamer pipelines including Jetson CSI cameras (OpenCV built with GStreamer, as JetPack ships it).

No decoding is done here by hand: PyAV (FFmpeg) decodes files, cameras and network streams, Pillow decodes
images, GStreamer decodes what its pipeline says. Every failure to find or open a source is one line
(:class:`~alexnet_deploy.errors.UserInputError` or :class:`~alexnet_deploy.errors.MissingDependencyError`).
"""
from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from alexnet_deploy.errors import MissingDependencyError, UserInputError
from alexnet_deploy.runtime.preprocess import IMAGE_SUFFIXES, find_images, load_image

# Network protocols handed to FFmpeg. Anything else with a scheme is refused with the list.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
HTTP_SCHEMES = ("http", "https")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv",
                  ".wmv", ".ogv", ".3gp", ".h264", ".264", ".hevc", ".h265", ".y4m")  # not .mjpg: cameras' feeds
# Seconds to wait for a camera or network stream to open, and for each read (FFmpeg's own timeouts).
DEFAULT_TIMEOUT_S = 10.0
# csi://N defaults (nvarguscamerasrc modes every Jetson CSI sensor offers); override with csi://0?width=...
CSI_DEFAULTS = {"width": 1280, "height": 720, "fps": 30, "flip": 0}
STREAM_PIP = "'alexnet-deploy[stream]'"


@dataclass
class SourceSpec:
    """What a source argument names. ``kind``: images | video | v4l2 | url | csi | gstreamer."""

    kind: str
    target: str  # a path, device, URL or GStreamer pipeline
    files: list[str] = field(default_factory=list)  # kind == "images"
    live: bool = False

    @property
    def input_paths(self) -> list[str]:
        """Files read by this source (an output must not overwrite one of them)."""
        if self.kind == "images":
            return list(self.files)
        return [self.target] if self.kind == "video" else []


@dataclass
class RawFrame:
    index: int  # position in the source, counting every frame it produced
    time: float | None  # presentation time in seconds (None for still images)
    image: Image.Image  # RGB
    name: str | None = None  # the file, for image sources


def parse_source(args: Sequence[str], *, live: bool | None = None) -> SourceSpec:
    """Classify the SOURCE arguments (checks only what can be checked without opening anything)."""
    args = [os.fspath(a) for a in args]
    if not args:
        raise UserInputError("give a source: images, a folder, a video file, /dev/videoN, a URL or csi://N")
    if len(args) > 1:
        specs = [parse_source([a]) for a in args]
        if any(s.kind != "images" for s in specs):
            raise UserInputError("only image files, folders and globs can be combined; give one video, "
                                 "camera, URL or pipeline at a time")
        spec = SourceSpec("images", " ".join(args), files=[f for s in specs for f in s.files])
        return _with_live(spec, live)
    arg = args[0]
    if not arg.strip():
        raise UserInputError("the source is an empty string")
    if arg.startswith("csi://"):
        csi_pipeline(arg)  # a malformed csi:// URL is refused before anything loads
        return _with_live(SourceSpec("csi", arg, live=True), live)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", arg)
    if scheme:
        name = scheme.group(1).lower()
        if name == "file":
            return parse_source([urlsplit(arg).path], live=live)
        if name in LIVE_SCHEMES:
            return _with_live(SourceSpec("url", arg, live=True), live)
        if name in HTTP_SCHEMES:  # a camera's MJPEG/HLS feed is live; a file served over HTTP is not
            is_file = Path(urlsplit(arg).path).suffix.lower() in VIDEO_SUFFIXES
            return _with_live(SourceSpec("url", arg, live=not is_file), live)
        raise UserInputError(f"unsupported source {arg!r}: scheme {name}:// is not one of "
                             f"{', '.join(s + '://' for s in LIVE_SCHEMES + HTTP_SCHEMES)}, csi://, file://")
    if "!" in arg and not os.path.exists(arg):
        return _with_live(SourceSpec("gstreamer", arg, live=True), live)
    if re.fullmatch(r"\d+", arg) and not os.path.exists(arg):
        arg = f"/dev/video{arg}"  # OpenCV's habit: a bare camera number
    if arg.startswith("/dev/"):
        return _with_live(_camera(arg), live)
    if os.path.isdir(arg):
        return _with_live(SourceSpec("images", arg, files=find_images([arg])), live)
    if os.path.exists(arg):
        if _is_char_device(arg):
            return _with_live(_camera(arg), live)
        if Path(arg).suffix.lower() in IMAGE_SUFFIXES:
            return _with_live(SourceSpec("images", arg, files=[arg]), live)
        return _with_live(SourceSpec("video", arg), live)
    if glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        files = find_images(matches) if matches else []
        if not files:
            raise UserInputError(f"no images match {arg}")
        return _with_live(SourceSpec("images", arg, files=files), live)
    raise UserInputError(f"source not found: {arg}")


def _with_live(spec: SourceSpec, live: bool | None) -> SourceSpec:
    if live is not None:
        spec.live = live
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
class Source:
    """Produces :class:`RawFrame` objects; ``open`` before ``frames``, ``close`` when done (idempotent)."""

    kind = "base"

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.live = spec.live
        self.rate: float | None = None  # nominal frames per second, when the source says
        self.frame_count: int | None = None  # when known up front (files)

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

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self.frame_count = len(spec.files)

    @property
    def description(self) -> str:
        return f"{len(self.spec.files)} image(s) from {self.spec.target}"

    def frames(self) -> Iterator[RawFrame]:
        for i, path in enumerate(self.spec.files):
            yield RawFrame(i, None, load_image(path), name=path)


def _require_av():
    try:
        import av
    except ImportError as exc:
        if exc.name not in (None, "av"):
            raise
        raise MissingDependencyError("av", STREAM_PIP, "video files, cameras and network streams") from None
    return av


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

    @property
    def description(self) -> str:
        what = {"video": "video file", "v4l2": "camera", "url": "stream"}[self.spec.kind]
        return f"{what} {self.spec.target}"

    def open(self) -> "AvSource":
        av = _require_av()
        target, fmt, options = self.spec.target, None, dict(self.options)
        if self.spec.kind == "v4l2":
            fmt = "v4l2"
        elif target.lower().startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", "tcp")  # UDP loses packets on most Wi-Fi and NATs
        timeout = None if self.spec.kind == "video" else (self.timeout_s, self.timeout_s)
        try:
            self._container = av.open(target, mode="r", format=fmt, options=options, timeout=timeout)
        except av.FFmpegError as exc:
            raise UserInputError(f"cannot open {self.description}: {_ffmpeg_reason(exc)}") from None
        except OSError as exc:
            raise UserInputError(f"cannot open {self.description}: {exc.strerror or exc}") from None
        if not self._container.streams.video:
            self.close()
            raise UserInputError(f"{self.description} has no video stream")
        self._stream = self._container.streams.video[0]
        # frame threading decodes several frames ahead: throughput for files, latency for live sources
        self._stream.thread_type = "SLICE" if self.live else "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.rate = float(rate) if rate else None
        self.frame_count = int(self._stream.frames) if self._stream.frames and not self.live else None
        return self

    def frames(self) -> Iterator[RawFrame]:
        av = _require_av()
        if self._container is None:
            self.open()
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                yield RawFrame(index, frame.time, frame.to_image())
                index += 1
        except av.FFmpegError as exc:
            raise SourceError(f"{self.description} failed after {index} frame(s): {_ffmpeg_reason(exc)}") from None

    def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()


class SourceError(UserInputError):
    """A source failed while it was being read (a camera unplugged, a stream that broke off)."""


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


class GStreamerSource(Source):
    """A GStreamer pipeline (raw, or built from ``csi://N``) through OpenCV's GStreamer backend."""

    kind = "gstreamer"

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self.pipeline = csi_pipeline(spec.target) if spec.kind == "csi" else spec.target
        if "appsink" not in self.pipeline:
            self.pipeline += " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=2"
        self._cap = None
        self._cv2 = None

    @property
    def description(self) -> str:
        return f"CSI camera {self.spec.target}" if self.spec.kind == "csi" else "GStreamer pipeline"

    def open(self) -> "GStreamerSource":
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
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            hint = ("is nvargus-daemon running and the sensor connected?" if self.spec.kind == "csi"
                    else "run it with gst-launch-1.0 to see why")
            raise UserInputError(f"GStreamer could not start {self.description} ({hint}): {self.pipeline}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.rate = float(fps) if fps and fps > 0 else None
        self._cap, self._cv2 = cap, cv2
        return self

    def frames(self) -> Iterator[RawFrame]:
        if self._cap is None:
            self.open()
        index = 0
        while self._cap is not None:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                return
            if bgr.ndim == 2:
                image = Image.fromarray(bgr).convert("RGB")
            else:
                image = Image.fromarray(bgr[:, :, 2::-1].copy())  # BGR(A) -> RGB
            msec = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
            yield RawFrame(index, msec / 1000.0 if msec and msec > 0 else None, image)
            index += 1

    def close(self) -> None:
        if self._cap is not None:
            cap, self._cap = self._cap, None
            cap.release()


def open_source(spec: SourceSpec, *, options: dict[str, str] | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Source:
    """An opened :class:`Source` for ``spec`` (errors opening it are one line)."""
    if spec.kind == "images":
        if options:
            raise UserInputError("--input-option applies to video files, cameras and streams, not to images")
        return ImageSource(spec).open()
    if spec.kind in ("csi", "gstreamer"):
        if options:
            raise UserInputError("--input-option applies to PyAV sources; put GStreamer options in the pipeline")
        return GStreamerSource(spec).open()
    return AvSource(spec, options=options, timeout_s=timeout_s).open()
