"""Outputs of a stream: JSON lines (one per frame) and the annotated video (PyAV encoder, finalized on stop).

The video is encoded into a temporary file beside the destination and renamed over it only once the encoder
is flushed and the container closed, so a crash or a kill never leaves a half-written file under the
destination's name; a run that wrote no frame leaves nothing.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageOps

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.fileio import check_writable

# output suffix -> (FFmpeg muxer, encoders to try in order)
CONTAINERS = {
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "ffv1", "mpeg4")),
    ".avi": ("avi", ("mpeg4", "libx264")),
}
# Encoder settings: x264's default quality at a speed that keeps up with a camera on a small CPU.
ENCODER_OPTIONS = {"libx264": {"crf": "23", "preset": "veryfast"}, "mpeg4": {"qscale": "3"}, "ffv1": {}}
PIX_FMT = {"libx264": "yuv420p", "mpeg4": "yuv420p", "ffv1": "yuv420p"}
TIME_BASE = Fraction(1, 1000)  # frames carry their source's timestamps in milliseconds (variable frame rate)
DEFAULT_FPS = 30.0


def container_for(path: str | os.PathLike, codec: str | None = None) -> tuple[str, str]:
    """(muxer, encoder) for an output path; one-line errors for unknown suffixes and encoders."""
    from alexnet_deploy.stream.sources import _require_av

    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise UserInputError(f"--output {path}: unsupported video suffix {suffix or '(none)'}; "
                             f"use one of {', '.join(CONTAINERS)}")
    muxer, preferred = CONTAINERS[suffix]
    available = _require_av().codecs_available
    if codec is not None:
        if codec not in available:
            raise UserInputError(f"--codec {codec}: this FFmpeg (PyAV) has no such encoder")
        return muxer, codec
    for name in preferred:
        if name in available:
            return muxer, name
    raise UserInputError(f"--output {path}: none of the encoders {', '.join(preferred)} is in this FFmpeg build")


class VideoSink:
    """Writes annotated frames to ``path`` (through a temporary file renamed on :meth:`close`)."""

    def __init__(self, path: str | os.PathLike, *, fps: float | None = None, codec: str | None = None):
        self.path = check_writable(path)
        self.muxer, self.codec = container_for(self.path, codec)
        self.fps = fps if fps and fps > 0 else DEFAULT_FPS
        self.frames = 0
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".tmp{self.path.suffix}",
                                       dir=self.path.parent)
        except OSError as exc:
            raise UserInputError(f"cannot write into {self.path.parent}: {exc.strerror}") from None
        os.close(fd)
        self.tmp_path = Path(tmp)
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._t0: float | None = None

    def _open(self, size: tuple[int, int]) -> None:
        from alexnet_deploy.stream.sources import _require_av

        av = _require_av()
        w, h = size[0] + size[0] % 2, size[1] + size[1] % 2  # 4:2:0 chroma needs even dimensions
        self._size = (w, h)
        self._container = av.open(str(self.tmp_path), mode="w", format=self.muxer)
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = PIX_FMT.get(self.codec, "yuv420p")
        stream.codec_context.time_base = TIME_BASE
        stream.options = dict(ENCODER_OPTIONS.get(self.codec, {}))
        self._stream = stream

    def write(self, image: Image.Image, time_s: float | None) -> None:
        """Encode one frame shown at ``time_s`` seconds (source time; None: the next slot at ``fps``)."""
        from alexnet_deploy.stream.sources import _require_av

        av = _require_av()
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
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self, keep: bool = True) -> bool:
        """Flush the encoder and close the container; rename over ``path`` when ``keep`` and a frame was written.
        Returns whether the file was kept. The temporary file never survives this call."""
        kept = False
        try:
            if self._container is not None:
                container, self._container = self._container, None
                try:
                    if keep:
                        for packet in self._stream.encode():  # flush delayed frames (B-frames, lookahead)
                            container.mux(packet)
                finally:
                    container.close()
            if keep and self.frames > 0:
                mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o666 & ~_umask()
                os.chmod(self.tmp_path, mode)
                os.replace(self.tmp_path, self.path)
                kept = True
        finally:
            if self.tmp_path.exists():
                self.tmp_path.unlink()
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
