"""alexnet-stream outputs: image sequences, UDP (MPEG-TS), RTP (MPEG-TS), RTSP publishing, encoder options, the
one-line refusals before any work, and the readable overlay.

Every output kind is read back with PyAV. RTSP: FFmpeg's own RTSP demuxer in listen mode (always here), and a
GStreamer gst-rtsp-server in RECORD mode (Debian: gir1.2-gst-rtsp-server-1.0, python3-gi,
gstreamer1.0-plugins-{good,bad}; skipped with the reason when missing).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="alexnet-stream needs PyAV: pip install 'alexnet-deploy[stream]'")

from alexnet_deploy.cli import stream_main  # noqa: E402
from alexnet_deploy.errors import AlexnetDeployError, UserInputError  # noqa: E402
from alexnet_deploy.stream import overlay  # noqa: E402
from alexnet_deploy.stream.sinks import VideoSink, check_output, parse_bitrate, parse_output  # noqa: E402

RED = (200, 40, 40)
SIZE = (96, 64)


def _free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame(color=RED, size=SIZE) -> Image.Image:
    return Image.new("RGB", size, color)


class Receiver(threading.Thread):
    """Decodes what arrives at ``url`` (PyAV) until ``want`` frames or the source ends; keeps (w, h, mean RGB)."""

    def __init__(self, url: str, fmt: str, options: dict, want: int):
        super().__init__(daemon=True)
        self.url, self.fmt, self.options, self.want = url, fmt, options, want
        self.frames: list[tuple[int, int, np.ndarray]] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self):
        try:
            with av.open(self.url, format=self.fmt, options=self.options) as c:
                for packet in c.demux(video=0):
                    try:
                        decoded = packet.decode()
                    except av.error.InvalidDataError:  # joined mid-stream: wait for the next key frame
                        continue
                    for f in decoded:
                        rgb = f.to_ndarray(format="rgb24")
                        self.frames.append((f.width, f.height, rgb.reshape(-1, 3).mean(axis=0)))
                    if len(self.frames) >= self.want:
                        return
        except BaseException as exc:  # a timeout after the sender stopped is the normal end
            self.error = exc
        finally:
            self.done.set()


def _send_until(sink: VideoSink, receiver: Receiver, deadline_s: float = 20.0, fps: float = 30.0) -> None:
    """Send frames in real time until the receiver has what it wants (it may join after the first key frame)."""
    t0 = time.monotonic()
    i = 0
    while not receiver.done.is_set() and time.monotonic() - t0 < deadline_s:
        sink.write(_frame(), i / fps)
        i += 1
        time.sleep(1 / fps)
    assert sink.close() is True


def _check_received(receiver: Receiver, want: int, size=SIZE) -> None:
    receiver.join(10)
    assert len(receiver.frames) >= want, f"got {len(receiver.frames)} frames ({receiver.error!r})"
    w, h, mean = receiver.frames[-1]
    assert (w, h) == size
    assert np.allclose(mean, RED, atol=12), mean  # the picture that was sent, not just packets


# --- kinds and refusals ----------------------------------------------------------------------------------------
def test_parse_output_kinds_and_refusals(tmp_path):
    assert parse_output("a.mp4").kind == "file" and parse_output("out/%05d.jpg").kind == "images"
    assert parse_output("rtsp://cam.local:8554/live").muxer == "rtsp"
    assert parse_output("rtp://239.0.0.1:5004").muxer == "rtp_mpegts"
    udp = parse_output("udp://127.0.0.1:5000")
    assert udp.muxer == "mpegts" and udp.url.endswith("?pkt_size=1316")
    for bad, words in [("srt://h:1", "unsupported scheme"), ("udp://host", "host and a port"),
                       ("rtsp://:8554/x", "host and a port"), ("shot.jpg", "numbered pattern"),
                       ("f/%05d.gif", "image sequence"), ("clip.xyz", "unsupported video suffix")]:
        with pytest.raises(UserInputError, match=words):
            parse_output(bad)
    assert parse_bitrate("4M") == 4_000_000 and parse_bitrate("800k") == 800_000 and parse_bitrate("2500000")
    for bad in ("fast", "12", "-3M"):
        with pytest.raises(UserInputError, match="--bitrate"):
            parse_bitrate(bad)
    with pytest.raises(UserInputError, match="preset=nope"):
        check_output(tmp_path / "a.mp4", encoder_options={"preset": "nope"})


def test_hardware_encoder_absent_or_unopenable_is_one_line(tmp_path):
    """h264_v4l2m2m without a V4L2 M2M device (or a PyAV without it): refused before any work."""
    with pytest.raises(UserInputError, match="h264_v4l2m2m") as info:
        check_output(tmp_path / "a.mp4", "h264_v4l2m2m")
    assert "\n" not in str(info.value)
    assert ("cannot be opened here" in str(info.value)) or ("no such encoder" in str(info.value))
    with pytest.raises(UserInputError, match="no such encoder"):
        check_output(tmp_path / "a.mp4", "h264_not_a_codec")


def test_rtsp_output_without_server_is_refused_before_any_work(cli, tmp_path):
    """MODEL does not exist: an error about the output proves it was checked before the model was opened."""
    port = _free_port(socket.SOCK_STREAM)
    folder = tmp_path / "in"
    folder.mkdir()
    _frame().save(folder / "a.png")
    for output, words in [(f"rtsp://127.0.0.1:{port}/live", "no RTSP server"),
                          ("udp://no-such-host.invalid:5000", "cannot resolve"),
                          ("srt://127.0.0.1:9000", "unsupported scheme")]:
        code, out, err = cli(stream_main, tmp_path / "missing.onnx", folder, "--output", output)
        assert code == 2, err
        assert err.strip().count("\n") == 0 and output.split(":")[0] in err and "Traceback" not in err, err
    code, out, err = cli(stream_main, tmp_path / "missing.onnx", folder, "--output", "o.mp4", "--bitrate", "x")
    assert code == 2 and "--bitrate" in err
    code, out, err = cli(stream_main, tmp_path / "missing.onnx", folder, "--output", "o.mp4",
                         "--encoder-option", "preset")
    assert code == 2 and "--encoder-option" in err and "KEY=VALUE" in err


# --- image sequences -------------------------------------------------------------------------------------------
def test_image_sequence_reads_back_and_is_never_mixed_with_old_frames(tmp_path):
    pattern = tmp_path / "frames" / "%05d.png"
    sink = VideoSink(pattern, fps=25)
    images = [_frame((10 * i, 100, 200 - 10 * i)) for i in range(4)]
    for i, img in enumerate(images):
        sink.write(img, i / 25)
    assert sink.close() is True and sink.frames == 4
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["00001.png", "00002.png", "00003.png", "00004.png"]  # no temporaries left
    with av.open(str(pattern), format="image2") as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 4 and all(np.array_equal(d, np.asarray(img)) for d, img in zip(decoded, images))
    with pytest.raises(UserInputError, match="00001.png and 3 more"):
        VideoSink(pattern)
    jpg = tmp_path / "jpg" / "f_%d.jpg"
    sink = VideoSink(jpg, encoder_options={"qscale": "3"})
    sink.write(_frame(), 0.0)
    sink.write(_frame(), 0.04)
    assert sink.close(keep=False) is False and not list((tmp_path / "jpg").iterdir())  # a failed run: removed
    sink = VideoSink(jpg)
    sink.write(_frame(size=(63, 47)), None)  # odd sizes: 4:2:0 JPEG on an even canvas
    assert sink.close() and (tmp_path / "jpg" / "f_1.jpg").exists()
    with av.open(str(jpg), format="image2") as c:
        f = next(c.decode(video=0))
    assert (f.width, f.height) == (64, 48)
    assert np.allclose(f.to_ndarray(format="rgb24")[:47, :63].reshape(-1, 3).mean(0), RED, atol=12)


# --- network outputs -------------------------------------------------------------------------------------------
def test_udp_mpegts_output_reads_back():
    port = _free_port()
    receiver = Receiver(f"udp://127.0.0.1:{port}", "mpegts", {"timeout": "10000000"}, want=10)
    receiver.start()
    time.sleep(0.3)
    sink = VideoSink(f"udp://127.0.0.1:{port}", fps=30, bitrate="1M")
    assert (sink.kind, sink.muxer) == ("udp", "mpegts")
    _send_until(sink, receiver)
    _check_received(receiver, 10)


def test_rtp_mpegts_output_reads_back_without_sdp():
    port = _free_port() & ~1  # RTP on an even port, RTCP on the next
    receiver = Receiver(f"rtp://127.0.0.1:{port}", "rtp", {"timeout": "10000000"}, want=10)
    receiver.start()
    time.sleep(0.3)
    sink = VideoSink(f"rtp://127.0.0.1:{port}", fps=30, encoder_options={"g": "10"})
    assert sink.muxer == "rtp_mpegts"
    _send_until(sink, receiver)
    _check_received(receiver, 10)


def test_rtsp_publish_to_ffmpeg_listener_reads_back():
    """FFmpeg's RTSP demuxer in listen mode takes one publisher (ANNOUNCE / RECORD). It accepts a single
    connection, so the construction-time port check is off (connect=False) and the first frame retries until the
    listener is up."""
    port = _free_port(socket.SOCK_STREAM)
    url = f"rtsp://127.0.0.1:{port}/live"
    receiver = Receiver(url, "rtsp", {"rtsp_flags": "listen", "listen_timeout": "15"}, want=10**6)  # to TEARDOWN
    receiver.start()
    sink = VideoSink(url, fps=30, connect=False)
    t0 = time.monotonic()
    while True:
        try:
            sink.write(_frame(), 0.0)
            break
        except AlexnetDeployError as exc:  # the listener is not up yet
            assert "refused" in str(exc).lower() and time.monotonic() - t0 < 10, exc
            time.sleep(0.1)
    for i in range(1, 40):
        sink.write(_frame(), i / 30)
        time.sleep(1 / 60)
    assert sink.close() is True
    _check_received(receiver, 30)


GST_RTSP_SERVER = textwrap.dedent("""
    import sys
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
    Gst.init(None)
    server = GstRtspServer.RTSPServer.new()
    server.set_service("0")
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    factory.set_launch("( rtph264depay name=depay0 ! h264parse ! mpegtsmux ! filesink buffer-mode=unbuffered location=%s )" % sys.argv[1])
    server.get_mount_points().add_factory("/live", factory)
    server.attach(None)
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
""")


@pytest.fixture
def gst_rtsp_server(tmp_path):
    """(port, recorded .ts) of a gst-rtsp-server in RECORD mode on loopback; skipped when it is not installed."""
    python = shutil.which("python3", path="/usr/bin")
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer; "
             "Gst.init(None); assert Gst.ElementFactory.find('rtph264depay') and Gst.ElementFactory.find('mpegtsmux')")
    if python is None or subprocess.run([python, "-c", probe], capture_output=True).returncode != 0:
        pytest.skip("needs gst-rtsp-server for Python (Debian: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)")
    recorded = tmp_path / "recorded.ts"
    script = tmp_path / "rtsp_server.py"
    script.write_text(GST_RTSP_SERVER)
    proc = subprocess.Popen([python, str(script), str(recorded)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline().strip() or 0)
        assert port > 0, proc.stderr.read()
        yield port, recorded
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_file(path: Path, timeout_s: float = 10.0) -> None:
    """Until ``path`` has stopped growing (the server writes what it received after the publisher's TEARDOWN)."""
    t0, last = time.monotonic(), -1
    while time.monotonic() - t0 < timeout_s:
        size = path.stat().st_size if path.exists() else -1
        if size > 0 and size == last:
            return
        last = size
        time.sleep(0.3)


def test_cli_publishes_annotated_frames_to_gst_rtsp_server(cli, tmp_path, gst_rtsp_server, small_onnx):
    port, recorded = gst_rtsp_server
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        _frame((20 * i, 90, 60), size=(160, 120)).save(folder / f"f{i:02d}.png")
    code, out, err = cli(stream_main, small_onnx, folder, "--output", f"rtsp://127.0.0.1:{port}/live",
                         "--max-fps", "30", "--bitrate", "500k", "--encoder-option", "g=4")
    assert code == 0, err
    assert "published (RTSP)" in err and "12 frames" in err
    assert len(out.splitlines()) == 12
    _wait_for_file(recorded)
    with av.open(str(recorded)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) >= 8 and frames[0].shape == (120, 160, 3)  # the tail may still sit in the server's muxer
    assert frames[0][2:8, 2:40].mean() < 80  # the overlay's dark box is in the picture


# --- the CLI end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """The small cifar10 variant with random weights: what is drawn and sent is tested, not what it predicts."""
    from alexnet_deploy.exporter.onnx_export import export_onnx
    from alexnet_deploy.models.weights import load_model

    return export_onnx(load_model("cifar10", "random", num_classes=10),
                       tmp_path_factory.mktemp("model") / "cifar10.onnx").path


def test_cli_image_sequence_output(cli, tmp_path, small_onnx):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        _frame((40 * i, 200, 90), size=(120, 90)).save(folder / f"f{i}.png")
    pattern = tmp_path / "out" / "%04d.jpg"
    code, out, err = cli(stream_main, small_onnx, folder, "--output", pattern, "--top-k", "3")
    assert code == 0, err
    assert "annotated frames" in err and "5 frames, mjpeg" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 5
    with av.open(str(pattern), format="image2") as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (90, 120, 3)
    source = np.asarray(Image.open(folder / "f0.png").convert("RGB"))
    assert np.abs(frames[0][60:, :].astype(int) - source[60:, :]).mean() < 6  # below the box (4 lines): the frame
    assert np.median(frames[0][1:30, 1:20, 1]) < 80 < source[1:30, 1:20, 1].min()  # the dark box (green: 200)
    code, out, err = cli(stream_main, small_onnx, folder, "--output", pattern)  # frames of that pattern exist
    assert code == 2 and "old and new frames would mix" in err and err.strip().count("\n") == 0


# --- the overlay -----------------------------------------------------------------------------------------------
TOP = [{"index": 1, "label": "golden retriever", "probability": 0.66},
       {"index": 4, "label": "tennis ball", "probability": 0.17},
       {"index": 7, "label": "n", "probability": float("nan")}]


def _box(image: Image.Image) -> tuple[int, int]:
    """Width and height of the dark box drawn over a mid-grey frame."""
    a = np.asarray(image).astype(int).sum(axis=2)
    dark = a < 3 * 128 - 120
    rows, cols = np.where(dark[:, :].any(axis=1))[0], np.where(dark.any(axis=0))[0]
    return int(cols.max()) + 1, int(rows.max()) + 1


def test_overlay_one_line_per_entry_percent_first():
    assert overlay.overlay_lines(TOP, 29.97, stream="cam1") == [
        "66.0% golden retriever", "17.0% tennis ball", "n/a n", "stream cam1  30.0 FPS"]
    assert overlay.format_entry({"label": "x", "probability": 1.0}) == "100.0% x"


def test_overlay_box_is_filled_and_scales_with_frame_height():
    small = overlay.annotate(Image.new("RGB", (640, 480), (128, 128, 128)), TOP, 30.0)
    large = overlay.annotate(Image.new("RGB", (1920, 1080), (128, 128, 128)), TOP, 30.0)
    (ws, hs), (wl, hl) = _box(small), _box(large)
    assert 1.9 < hl / hs < 2.6 and 1.9 < wl / ws < 2.6  # 1080 / 480 = 2.25
    assert hs >= 4 * overlay.text_size(480)  # four lines
    corner = np.asarray(small)[1:4, 1:4]
    assert corner.max() < 60  # filled, not outlined
    text = np.asarray(small)[: hs, : ws]
    assert (text.sum(axis=2) > 600).sum() > 200  # white text on it


def test_overlay_small_frames_keep_the_best_class_and_bitmap_fallback_scales(monkeypatch):
    tiny = overlay.annotate(Image.new("RGB", (64, 32), (128, 128, 128)), TOP, 30.0)
    assert tiny.size == (64, 32) and _box(tiny)[1] <= 32
    from PIL import ImageFont

    if not hasattr(ImageFont, "load_default_imagefont"):
        pytest.skip("Pillow < 10.1 has no separate bitmap default font")
    monkeypatch.setattr(overlay, "_font", lambda size: ImageFont.load_default_imagefont())
    out = overlay.annotate(Image.new("RGB", (1280, 720), (128, 128, 128)), TOP[:2], 30.0)
    w, h = _box(out)
    assert h >= 3 * overlay.text_size(720)  # not 8-pixel text: the bitmap font is drawn scaled up
