"""alexnet-stream: sources, the pipelined drop policy, outputs, signals and one-line errors.

Videos are generated here from the embedded digits (lossless FFV1 / x264rgb qp 0, and lossy H.264) and the
stream's per-frame top-1 is compared with alexnet-predict's on the very same frames.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="alexnet-stream needs PyAV: pip install 'alexnet-deploy[stream]'")

from alexnet_deploy.cli import predict_main, stream_main  # noqa: E402
from alexnet_deploy.errors import UserInputError  # noqa: E402
from alexnet_deploy.stream.pipeline import StreamOptions, StreamPipeline  # noqa: E402
from alexnet_deploy.stream.sources import RawFrame, Source, SourceSpec, open_source, parse_source  # noqa: E402
from helpers import SlowRunner  # noqa: E402

N_FRAMES = 100
SIZE = 64  # digits (8x8) upscaled with nearest: H.264 needs more than 8 pixels, the model resizes to 32


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """N_FRAMES held-out digits as 64x64 RGB PNGs, frame_000.png ... (what alexnet-predict reads)."""
    from alexnet_deploy.data.datasets import load_digits

    held = load_digits("heldout")
    out = tmp_path_factory.mktemp("frames")
    for i in range(N_FRAMES):
        held.image(i).convert("RGB").resize((SIZE, SIZE), Image.NEAREST).save(out / f"frame_{i:03d}.png")
    return out


def _frames(folder: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("frame_*.png"))]


def encode(path: Path, images, codec: str, pix_fmt: str, options: dict | None = None, rate: int = 25) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height = images[0].size
        s.pix_fmt = pix_fmt
        s.options = options or {}
        for img in images:
            for packet in s.encode(av.VideoFrame.from_image(img)):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def videos(frames_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    images = _frames(frames_dir)
    return {
        "ffv1": encode(folder / "digits-ffv1.mkv", images, "ffv1", "bgr0"),
        "x264rgb": encode(folder / "digits-x264rgb.mkv", images, "libx264rgb", "rgb24", {"qp": "0"}),
        "h264": encode(folder / "digits-h264.mp4", images, "libx264", "yuv420p", {"crf": "23"}),
    }


@pytest.fixture(scope="module")
def predicted(digits_onnx, frames_dir) -> list[str]:
    """alexnet-predict's top-1 label for each frame PNG."""
    from click.testing import CliRunner

    r = CliRunner().invoke(predict_main, [str(digits_onnx), str(frames_dir), "--json", "--top-k", "1"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [Path(x["image"]).name for x in results] == [f"frame_{i:03d}.png" for i in range(N_FRAMES)]
    return [x["top"][0]["label"] for x in results]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- agreement with alexnet-predict --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ffv1", "x264rgb"])
def test_lossless_video_matches_predict_and_writes_annotated_video(cli, digits_onnx, videos, frames_dir,
                                                                   predicted, tmp_path, kind):
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(decode(videos[kind]), _frames(frames_dir)))
    out, lines, summary = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl", tmp_path / "summary.json"
    code, _, err = cli(stream_main, digits_onnx, videos[kind], "--batch", "4", "--top-k", "3",
                       "--output", out, "--jsonl", lines, "--summary", summary)
    assert code == 0, err
    recs = _jsonl(lines)
    assert [r["frame"] for r in recs] == list(range(N_FRAMES))
    assert [r["top"][0]["label"] for r in recs] == predicted
    assert recs[1]["time"] == pytest.approx(0.04)  # 25 fps source timestamps
    assert set(recs[0]["latency_ms"]) == {"decode", "preprocess", "infer", "output", "end_to_end"}
    assert all(len(r["top"]) == 3 and 1 <= r["batch"] <= 4 for r in recs)
    decoded = decode(out)  # the annotated video decodes, one frame per input frame, at the source's size
    assert len(decoded) == N_FRAMES and decoded[0].shape == (SIZE, SIZE, 3)
    assert not np.array_equal(decoded[0][:8], np.asarray(_frames(frames_dir)[0])[:8])  # text drawn on top
    with av.open(str(out)) as c:
        assert c.duration / 1e6 == pytest.approx(N_FRAMES / 25, abs=0.1)  # timestamps carried over
    s = json.loads(summary.read_text())
    assert s["frames"] == N_FRAMES and s["dropped"] == 0 and s["stopped_by"] == "end of stream"
    assert s["latency_ms"]["end_to_end"]["p99"] >= s["latency_ms"]["end_to_end"]["p50"] > 0
    assert "frames in" in err and "p99" in err
    assert not list(tmp_path.glob(".*tmp*"))


def test_lossy_h264_agrees_with_predict(cli, digits_onnx, videos, predicted, tmp_path):
    lines = tmp_path / "h264.jsonl"
    code, _, err = cli(stream_main, digits_onnx, videos["h264"], "--jsonl", lines, "-k", "1")
    assert code == 0, err
    labels = [r["top"][0]["label"] for r in _jsonl(lines)]
    assert len(labels) == N_FRAMES
    agreement = np.mean([a == b for a, b in zip(labels, predicted)])
    assert agreement >= 0.99, agreement


def test_image_folder_and_glob_sources_match_predict(cli, digits_onnx, frames_dir, predicted, tmp_path):
    lines = tmp_path / "images.jsonl"
    code, _, err = cli(stream_main, digits_onnx, str(frames_dir / "frame_0*.png"), "--jsonl", lines,
                       "--batch", "8", "-k", "1")
    assert code == 0, err
    recs = _jsonl(lines)
    assert [Path(r["image"]).name for r in recs] == [f"frame_{i:03d}.png" for i in range(N_FRAMES)]
    assert [r["top"][0]["label"] for r in recs] == predicted
    assert recs[0]["time"] is None


# --- pipeline: drop policy, pacing (a fake camera and a deliberately slow runner) ---------------------------
class TickSource(Source):
    """A camera-like source: ``n`` frames at ``fps`` (sleeping between them), live or not."""

    kind = "ticks"

    def __init__(self, n: int, fps: float, live: bool):
        super().__init__(SourceSpec("url", "fake://ticks", live=live))
        self.n, self.fps = n, fps

    def frames(self):
        for i in range(self.n):
            time.sleep(1 / self.fps)
            yield RawFrame(i, i / self.fps, Image.new("RGB", (32, 32), (i % 256, 0, 0)))


def _run(source, runner, **options):
    records = []
    result = StreamPipeline(source, runner, StreamOptions(warmup=False, **options),
                            on_record=lambda r: records.append(r) or True).run()
    assert result.error is None, result.error
    return result.stats, records


def test_live_source_drops_oldest_frames_when_inference_falls_behind():
    stats, recs = _run(TickSource(60, fps=300, live=True), SlowRunner(0.02))
    assert stats.decoded == 60
    assert stats.dropped > 20  # ~300 fps in, ~50 fps out
    assert stats.frames + stats.dropped == stats.decoded and stats.frames == len(recs)
    idx = [r["frame"] for r in recs]
    assert idx == sorted(idx) and idx[-1] == 59  # the newest frame survives: the oldest were evicted


def test_live_batches_take_what_is_there_and_files_never_drop():
    runner = SlowRunner(0.005)
    stats, recs = _run(TickSource(40, fps=2000, live=False), runner, batch=4)
    assert stats.dropped == 0 and stats.frames == 40
    assert [r["frame"] for r in recs] == list(range(40))
    assert runner.batches == [4] * 10  # files wait for full batches
    live = SlowRunner(0.005)
    stats, _ = _run(TickSource(40, fps=100, live=True), live, batch=4)
    assert stats.frames + stats.dropped == 40 and min(live.batches) < 4  # live: no waiting for a full batch


def test_max_fps_skips_live_frames_and_paces_files():
    stats, _ = _run(TickSource(100, fps=200, live=True), SlowRunner(0), max_fps=20)
    assert stats.skipped > 50
    assert stats.frames + stats.skipped + stats.dropped == stats.decoded == 100
    assert stats.frames <= stats.seconds * 20 + 2
    stats, _ = _run(TickSource(10, fps=5000, live=False), SlowRunner(0), max_fps=50)
    assert stats.frames == 10 and stats.skipped == 0 and stats.seconds >= 0.17


def test_max_frames_stops_early():
    stats, recs = _run(TickSource(50, fps=5000, live=False), SlowRunner(0), max_frames=7)
    assert stats.frames == 7 and stats.stopped_by == "--max-frames"


def test_failing_runner_is_reported_and_video_discarded(tmp_path):
    from alexnet_deploy.errors import InferenceError
    from alexnet_deploy.stream.sinks import VideoSink

    class Broken(SlowRunner):
        def infer_batches(self, x, batch_size):
            raise InferenceError("runner exploded")

    video = VideoSink(tmp_path / "v.mp4", fps=25)
    result = StreamPipeline(TickSource(5, 1000, False), Broken(0), StreamOptions(warmup=False), video=video).run()
    assert isinstance(result.error, InferenceError) and result.stats.stopped_by == "error"
    assert not result.video_kept and not list(tmp_path.iterdir())


def test_interrupt_with_a_stalled_camera_finalizes_what_was_classified(tmp_path):
    """Ctrl-C while the camera delivers nothing: the decoder stays blocked in its read, everything else ends,
    the video holds every classified frame."""
    import _thread
    import threading

    from alexnet_deploy.stream.sinks import VideoSink

    release = threading.Event()

    class Stalling(TickSource):
        def frames(self):
            yield from super().frames()
            release.wait(30)  # a camera that stopped sending

    records = []

    def on_record(rec):
        records.append(rec)
        if len(records) == 3:
            threading.Timer(0.2, _thread.interrupt_main).start()
        return True

    video = VideoSink(tmp_path / "cam.mkv", fps=30)
    t0 = time.perf_counter()
    try:
        result = StreamPipeline(Stalling(3, 100, live=True), SlowRunner(0), StreamOptions(warmup=False),
                                video=video, on_record=on_record).run()
    finally:
        release.set()
    assert time.perf_counter() - t0 < 10
    assert result.interrupted and result.error is None and result.stats.stopped_by == "interrupted"
    assert result.video_kept and len(decode(tmp_path / "cam.mkv")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cam.mkv"]


# --- sources and one-line errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("source, message", [
    ("/dev/video7", "camera /dev/video7 not found"),
    ("7", "camera /dev/video7 not found"),
    ("gopher://host/x", "unsupported source 'gopher://host/x'"),
    ("missing.mp4", "source not found: missing.mp4"),
    ("*.nothing", "no images match"),
    ("csi://x", "expected csi://N"),
    ("csi://0?zoom=2", "unknown parameter 'zoom'"),
])
def test_bad_sources_are_one_line_errors(cli, tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(stream_main, tmp_path / "model.onnx", source)  # refused before the model is read
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unreadable_streams_and_files_are_one_line_errors(cli, digits_onnx, videos, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    cases = [
        ([f"rtsp://127.0.0.1:{port}/cam", "--timeout", "2"], "cannot open stream rtsp://127.0.0.1:"),
        ([str(garbage)], "cannot open video file"),
        ([str(videos["ffv1"]), "--output", str(videos["ffv1"])], "writing it would destroy an input"),
        ([str(videos["ffv1"]), "--output", str(tmp_path / "x.webm")], "unsupported video suffix .webm"),
        ([str(videos["ffv1"]), str(videos["h264"])], "only image files, folders and globs can be combined"),
        ([str(videos["ffv1"]), "--input-option", "oops"], "expected KEY=VALUE"),
    ]
    for args, message in cases:
        code, out, err = cli(stream_main, digits_onnx, *args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


def test_gstreamer_needs_opencv_with_gstreamer(monkeypatch, cli, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # no OpenCV at all
    code, _, err = cli(stream_main, tmp_path / "m.onnx", "csi://0")
    assert code == 2 and err.count("\n") == 1
    fake = types.SimpleNamespace(__version__="4.13.0", getBuildInformation=lambda: "  Video I/O:\n    GStreamer: NO\n")
    monkeypatch.setitem(sys.modules, "cv2", fake)  # pip's opencv-python: built without GStreamer
    with pytest.raises(UserInputError, match="built without GStreamer"):
        open_source(parse_source(["videotestsrc ! appsink"]))


def test_gstreamer_source_reads_bgr_frames_through_opencv(monkeypatch):
    frames = [np.zeros((4, 6, 3), np.uint8) for _ in range(3)]
    for f in frames:
        f[..., 0] = 255  # pure blue in BGR

    class Capture:
        opened = []

        def __init__(self, pipeline, api):
            Capture.opened.append(pipeline)
            self.left = list(frames)

        def isOpened(self):
            return True

        def read(self):
            return (True, self.left.pop(0)) if self.left else (False, None)

        def get(self, prop):
            return 30.0 if prop == "fps" else 0.0

        def release(self):
            pass

    fake = types.SimpleNamespace(__version__="4.8.0", CAP_GSTREAMER=1800, CAP_PROP_FPS="fps", CAP_PROP_POS_MSEC="ms",
                                 getBuildInformation=lambda: "    GStreamer:                   YES (1.20.3)\n",
                                 VideoCapture=Capture)
    monkeypatch.setitem(sys.modules, "cv2", fake)
    src = open_source(parse_source(["csi://1?width=1920&height=1080&fps=60"]))
    assert src.live and src.rate == 30.0
    frames = src.frames()  # a live camera has no clean end (its end is a break, exit 2): take the three
    got = [next(frames) for _ in range(3)]
    assert len(got) == 3 and got[0].image.getpixel((0, 0)) == (0, 0, 255)
    assert Capture.opened[0].startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=1920,height=1080,framerate=60/1" in Capture.opened[0] and "appsink" in Capture.opened[0]


def test_missing_pyav_is_one_line(monkeypatch, videos):
    from alexnet_deploy.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'alexnet-deploy\[stream\]'"):
        open_source(parse_source([str(videos["ffv1"])]))


def test_source_kinds_and_live_defaults(tmp_path):
    assert parse_source(["rtsp://10.0.0.2/cam"]).live
    assert parse_source(["http://cam.local/video.mjpg"]).live
    assert not parse_source(["https://example.org/clip.mp4"]).live
    assert parse_source(["https://example.org/clip.mp4"], live=True).live
    assert parse_source(["csi://0"]).kind == "csi"
    assert parse_source(["v4l2src ! videoconvert ! appsink"]).kind == "gstreamer"
    # a pipeline is live unless its source reads a file or is a finite, non-live test source
    assert parse_source(["v4l2src device=/dev/video0 ! videoconvert ! appsink"]).live
    assert parse_source(["rtspsrc location=rtsp://h/s ! decodebin ! videoconvert ! appsink"]).live
    assert not parse_source(["filesrc location=/v/a.mp4 ! decodebin ! videoconvert ! appsink"]).live
    assert not parse_source(["  multifilesrc location=f%03d.jpg ! jpegdec ! videoconvert ! appsink"]).live
    assert not parse_source(["videotestsrc num-buffers=30 ! videoconvert ! appsink"]).live
    assert parse_source(["videotestsrc ! videoconvert ! appsink"]).live  # no end
    assert parse_source(["videotestsrc is-live=true num-buffers=30 ! videoconvert ! appsink"]).live
    assert parse_source(["videotestsrc num-buffers=-1 ! videoconvert ! appsink"]).live
    assert parse_source(["filesrc location=a.mp4 ! decodebin ! appsink"], live=True).live  # --live wins
    assert not parse_source(["v4l2src ! videoconvert ! appsink"], live=False).live  # --no-live wins


# --- signals: a real process, a real signal ------------------------------------------------------------------
STREAM = "import sys; from alexnet_deploy.cli import stream_main; sys.exit(stream_main())"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_finalizes_a_playable_video_and_prints_the_summary(digits_onnx, videos, tmp_path, sig):
    out = tmp_path / "clip.mp4"
    # paced to 25 fps: 4 s of video, stopped after a few frames
    proc = subprocess.Popen([sys.executable, "-c", STREAM, str(digits_onnx), str(videos["ffv1"]), "--max-fps", "25",
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
        assert all(lines), proc.stderr.read()
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written = len(lines) + len(rest.splitlines())
    assert proc.returncode == 128 + sig, err
    assert "stopped by interrupted" in err and "annotated video" in err and "Traceback" not in err
    assert 5 <= written < N_FRAMES
    assert len(decode(out)) == written  # finalized: every classified frame is in the file, and it decodes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary left behind


def test_stream_runs_without_torch(digits_onnx, videos, tmp_path):
    """The stream is part of the runtime path: Jetson and aarch64 images have no torch."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError("torch blocked for this test")
        sys.meta_path.insert(0, Block())
        from alexnet_deploy.cli import stream_main
        try:
            stream_main()
        finally:
            assert "torch" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code, str(digits_onnx), str(videos["h264"]), "--max-frames", "10",
                          "-k", "1", "--output", str(tmp_path / "o.mkv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 10 and len(decode(tmp_path / "o.mkv")) == 10
