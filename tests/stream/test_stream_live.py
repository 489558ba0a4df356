"""alexnet-stream against live sources it does not control: exit codes a supervisor can trust (cut streams,
truncated files, silence), reconnects, bounded frame age, several streams in one process, RTP without SDP,
GStreamer timeouts, and the folder / disk problems of issue 20.

Every source is generated here: PyAV writes MPEG-TS to udp://127.0.0.1:PORT and RTP to rtp://127.0.0.1:PORT;
the RTSP tests start GStreamer's gst-rtsp-server (Debian: gir1.2-gst-rtsp-server-1.0, python3-gi,
gstreamer1.0-plugins-{base,good,ugly}) under the system Python and skip, saying so, where it is missing.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="alexnet-stream needs PyAV: pip install 'alexnet-deploy[stream]'")

from alexnet_deploy.cli import stream_main  # noqa: E402
from alexnet_deploy.stream.pipeline import StreamOptions, StreamPipeline  # noqa: E402
from alexnet_deploy.stream.sources import (RawFrame, Source, SourceError, SourceSpec, create_source,  # noqa: E402
                                           parse_source, parse_sources, pipeline_elements)
from helpers import SlowRunner, mounted_tmpfs  # noqa: E402

pytestmark = pytest.mark.slow  # real RTSP/UDP/RTP servers, restarts and timeouts: seconds per test

SIZE = 64
FPS = 25


def _free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _picture(i: int) -> Image.Image:
    rng = np.random.default_rng(i % 7)
    return Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))


def _write_video(path: Path, n: int, *, options: dict | None = None, codec: str = "libx264") -> Path:
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.options = {"g": "10"}
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_image(_picture(i))):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _send(url: str, fmt: str, seconds: float, stop: threading.Event) -> None:
    """Encode H.264 at FPS (paced to the wall clock) to ``url`` for ``seconds`` (or until ``stop``)."""
    with av.open(url, "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.options = {"tune": "zerolatency", "preset": "ultrafast", "g": str(FPS // 2)}
        t0 = time.monotonic()
        for i in range(int(seconds * FPS)):
            if stop.is_set():
                break
            delay = t0 + i / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for p in s.encode(av.VideoFrame.from_image(_picture(i))):
                c.mux(p)


@contextlib.contextmanager
def udp_sender(port: int, segments: list[tuple[float, float]]):
    """MPEG-TS over UDP: for each (pause_before_s, send_s), wait, then send (a new muxer: a restarted sender)."""
    stop = threading.Event()

    def run():
        for pause, send in segments:
            if stop.wait(pause):
                return
            _send(f"udp://127.0.0.1:{port}?pkt_size=1316", "mpegts", send, stop)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(10)


FAST_PROBE = ["--input-option", "analyzeduration=500000", "--input-option", "probesize=200000"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --- exit codes: end of file 0, a truncated file 2, a cut stream 2 (after outputs and summary) ---------------
def test_truncated_file_is_exit_2_after_the_summary_and_a_finalized_video(cli, digits_onnx, tmp_path):
    whole = _write_video(tmp_path / "whole.mp4", 60, options={"movflags": "+faststart"})  # moov at the front
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    code, _, err = cli(stream_main, digits_onnx, whole, "--jsonl", "none")
    assert code == 0 and "stopped by end of stream" in err, err
    out, lines = tmp_path / "out.mkv", tmp_path / "cut.jsonl"
    code, _, err = cli(stream_main, digits_onnx, cut, "--jsonl", lines, "--output", out)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: video file ") and "cut.mp4 is truncated" in last and "of the 60 frames" in last
    assert "frames in" in err and "stopped by error" in err  # the summary came first
    n = len(_jsonl(lines))
    assert 0 < n < 60 and _decoded_frames(out) == n  # what was classified is kept, finalized


def test_udp_stream_that_goes_silent_is_exit_2_naming_source_and_timeout(cli, digits_onnx, tmp_path):
    port = _free_port()
    out, lines, summary = tmp_path / "cam.mkv", tmp_path / "cam.jsonl", tmp_path / "s.json"
    with udp_sender(port, [(0.0, 2.5)]):
        t0 = time.monotonic()
        code, _, err = cli(stream_main, digits_onnx, f"udp://127.0.0.1:{port}", "--timeout", "1", *FAST_PROBE,
                           "--jsonl", lines, "--output", out, "--summary", summary)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: stream udp://127.0.0.1:{port} broke off after ")
    assert "no data for 1 s (--timeout)" in last and "Immediate exit" not in err
    recs = _jsonl(lines)
    assert recs and _decoded_frames(out) == len(recs)
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "error" and "no data for 1 s" in s["error"] and s["frames"] == len(recs)
    assert s["age_ms"]["p50"] > 0 and all(r["age_ms"] > 0 for r in recs)
    assert time.monotonic() - t0 < 30


def test_udp_reconnect_after_the_sender_restarts_continues_the_same_outputs(cli, digits_onnx, tmp_path):
    port = _free_port()
    out, lines, summary = tmp_path / "cam.mkv", tmp_path / "cam.jsonl", tmp_path / "s.json"
    with udp_sender(port, [(0.0, 2.0), (2.0, 30.0)]):  # a 2 s outage: longer than --timeout
        code, _, err = cli(stream_main, digits_onnx, f"udp://127.0.0.1:{port}", "--timeout", "1", *FAST_PROBE,
                           "--reconnect", "20", "--reconnect-delay", "0.2", "--duration", "9",
                           "--jsonl", lines, "--output", out, "--summary", summary)
    assert code == 0, err
    assert "reconnecting in 0.2 s" in err
    s = json.loads(summary.read_text())
    recs = _jsonl(lines)
    assert s["reconnects"] >= 1 and s["stopped_by"] == "--duration" and s["frames"] == len(recs)
    assert [r["frame"] for r in recs] == sorted({r["frame"] for r in recs})  # one run, indices go on
    times = [r["time"] for r in recs]
    assert times == sorted(times) and max(np.diff(times)) >= 1.0  # the outage shows in the timeline
    gap = int(np.argmax(np.diff([r["wall_time"] for r in recs])))
    assert 0 < gap < len(recs) - 5  # frames before and after the outage
    assert _decoded_frames(out) == len(recs)  # one video across the reconnect


# --- RTSP: a real server (GStreamer's gst-rtsp-server) killed and restarted ---------------------------------
RTSP_SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
port, w, h, fps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
server = GstRtspServer.RTSPServer()
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
                   f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
                   "! rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


def rtsp_server_missing() -> str | None:
    py = shutil.which("python3", path="/usr/bin")
    if py is None:
        return "no /usr/bin/python3 (gst-rtsp-server runs under the system Python with python3-gi)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(e)]; "
             "print(' '.join(missing))")
    try:
        r = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot probe GStreamer: {exc}"
    if r.returncode != 0:
        return ("gst-rtsp-server is not installed (apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)")
    if r.stdout.strip():
        return f"GStreamer elements missing: {r.stdout.strip()} (gstreamer1.0-plugins-good / -ugly)"
    return None


class RtspServer:
    def __init__(self, port: int):
        self.port, self.proc = port, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", "-c", RTSP_SERVER, str(self.port), str(SIZE), str(SIZE),
                                      str(FPS)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rtsp_server():
    why = rtsp_server_missing()
    if why:
        pytest.skip(why)
    server = RtspServer(_free_port(socket.SOCK_STREAM))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_rtsp_server_killed_is_exit_2_and_a_restart_is_reconnected(cli, digits_onnx, tmp_path, rtsp_server):
    lines = tmp_path / "a.jsonl"
    threading.Timer(3.0, rtsp_server.kill).start()
    code, _, err = cli(stream_main, digits_onnx, rtsp_server.url, "--timeout", "3", "--jsonl", lines)
    assert code == 2, err  # not "stopped by end of stream", exit 0
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: stream {rtsp_server.url} broke off after ") and "frames in" in err
    assert _jsonl(lines)

    rtsp_server.start()
    lines, out = tmp_path / "b.jsonl", tmp_path / "b.mkv"
    restart = threading.Timer(4.0, lambda: (rtsp_server.kill(), time.sleep(1.0), rtsp_server.start()))
    restart.start()
    code, _, err = cli(stream_main, digits_onnx, rtsp_server.url, "--timeout", "3", "--reconnect", "10",
                       "--reconnect-delay", "0.5", "--duration", "10", "--jsonl", lines, "--output", out)
    restart.join()
    assert code == 0, err
    assert "reconnects 1" in err or "reconnects 2" in err, err
    recs = _jsonl(lines)
    assert [r["frame"] for r in recs] == list(range(recs[0]["frame"], recs[0]["frame"] + len(recs))) or \
        [r["frame"] for r in recs] == sorted(r["frame"] for r in recs)
    assert _decoded_frames(out) == len(recs)


# --- bounded latency: frame age with a deliberately slow runner ---------------------------------------------
class Camera(Source):
    """Frames at ``fps`` (paced), each stamped with the wall clock it was 'taken' at; counts RGB conversions."""

    kind = "camera"

    def __init__(self, n: int, fps: float, live: bool = True):
        super().__init__(SourceSpec("url", "fake://camera", live=live))
        self.n, self.fps, self.converted = n, fps, 0

    def _convert(self, i):
        self.converted += 1
        return Image.new("RGB", (32, 32), (i % 256, 0, 0))

    def frames(self):
        t0 = time.time()
        for i in range(self.n):
            due = t0 + i / self.fps
            if due > time.time():
                time.sleep(due - time.time())
            yield RawFrame(i, i / self.fps, convert=lambda i=i: self._convert(i), captured=due)


def _run(sources, runner, **options):
    records = []
    result = StreamPipeline(sources, runner, StreamOptions(warmup=False, **options),
                            on_record=lambda r: records.append(r) or True).run()
    return result, records


def test_frame_age_stays_bounded_live_and_grows_for_a_file_with_a_slow_runner():
    delay = 0.05
    cam = Camera(60, fps=100)  # 100 fps into a 20 fps model
    result, recs = _run(cam, SlowRunner(delay))
    assert result.error is None
    ages = np.array([r["age_ms"] for r in recs]) / 1e3
    assert ages.min() >= delay * 0.9  # a result is never younger than the inference it took
    assert ages.max() < 6 * delay + 0.2  # single slot: a frame waiting plus one classified (an unbounded queue: ~2.4 s)
    assert result.stats.dropped > 20 and result.stats.frames + result.stats.dropped == 60
    assert cam.converted == result.stats.frames  # dropped frames were never converted to RGB
    s = result.stats.to_dict()
    assert s["age_ms"]["p50"] == pytest.approx(np.percentile(ages, 50) * 1e3, rel=0.05)

    clip = Camera(20, fps=1000, live=False)  # a file: nothing is dropped, so the backlog ages
    result, recs = _run(clip, SlowRunner(delay))
    ages = np.array([r["age_ms"] for r in recs]) / 1e3
    assert len(recs) == 20 and result.stats.dropped == 0
    assert ages[-1] - ages[0] > 10 * delay  # ~19 inference times of backlog by the last frame


def test_max_fps_skips_before_rgb_conversion():
    cam = Camera(100, fps=200)
    result, recs = _run(cam, SlowRunner(0), max_fps=20)
    st = result.stats
    assert st.skipped > 50 and st.frames + st.skipped + st.dropped == 100
    assert cam.converted == st.frames


# --- several streams in one process ------------------------------------------------------------------------
def test_two_streams_are_batched_with_stream_ids_and_their_own_outputs(cli, digits_onnx, tmp_path):
    a = _write_video(tmp_path / "a.mp4", 12)
    b = _write_video(tmp_path / "b.mkv", 20)
    lines, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    code, _, err = cli(stream_main, digits_onnx, "--source", a, "--source", b, "--batch", "2",
                       "--output", tmp_path / "a-out.mkv", "--output", tmp_path / "b-out.mkv",
                       "--jsonl", lines, "--summary", summary)
    assert code == 0, err
    recs = _jsonl(lines)
    by = {sid: [r["frame"] for r in recs if r["stream"] == sid] for sid in (0, 1)}
    assert by == {0: list(range(12)), 1: list(range(20))}
    assert sum(r["batch"] == 2 for r in recs) >= 20  # one inference for a frame of each stream
    assert _decoded_frames(tmp_path / "a-out.mkv") == 12 and _decoded_frames(tmp_path / "b-out.mkv") == 20
    s = json.loads(summary.read_text())
    assert [(x["stream"], x["frames"]) for x in s["streams"]] == [(0, 12), (1, 20)] and s["frames"] == 32
    assert "stream 0 (" in err and "stream 1 (" in err


class Breaking(Camera):
    def frames(self):
        yield from Camera(3, self.fps).frames()
        raise SourceError("stream fake://breaking broke off after 3 frame(s): the stream ended")


def test_one_failing_stream_does_not_stop_the_others_unless_fail_fast():
    result, recs = _run([Breaking(0, 100), Camera(40, fps=100)], SlowRunner(0.001))
    assert "stream 0: stream fake://breaking broke off" in str(result.error)
    assert [r["frame"] for r in recs if r["stream"] == 1][-1] == 39  # the other stream ran to its end
    per = result.stats.to_dict()["streams"]
    assert per[0]["stopped_by"] == "error" and per[1]["stopped_by"] == "end of stream"

    result, recs = _run([Breaking(0, 100), Camera(400, fps=100)], SlowRunner(0.001), fail_fast=True)
    assert result.error is not None
    assert len([r for r in recs if r["stream"] == 1]) < 200  # stopped with the failing one


# --- inputs: RTP without SDP, --input-format, --loop, HTTP/UDP live detection ------------------------------
def test_rtp_without_sdp_needs_input_codec_and_works_with_it(cli, digits_onnx, tmp_path):
    port = _free_port()
    code, _, err = cli(stream_main, digits_onnx, f"rtp://127.0.0.1:{port}", "--timeout", "1")
    assert code == 2 and "--input-codec" in err and err.count("\n") == 1, err
    lines = tmp_path / "rtp.jsonl"
    stop = threading.Event()
    sender = threading.Thread(target=_send, args=(f"rtp://127.0.0.1:{port}", "rtp", 20.0, stop), daemon=True)
    sender.start()
    try:
        code, _, err = cli(stream_main, digits_onnx, f"rtp://127.0.0.1:{port}", "--input-codec", "h264",
                           "--timeout", "5", "--max-frames", "10", "--jsonl", lines, *FAST_PROBE)
    finally:
        stop.set()
        sender.join(10)
    assert code == 0, err
    assert len(_jsonl(lines)) == 10 and "stopped by --max-frames" in err


def test_loop_replays_a_file_and_input_format_picks_the_demuxer(cli, digits_onnx, tmp_path):
    clip = _write_video(tmp_path / "clip.mp4", 10)
    lines = tmp_path / "loop.jsonl"
    code, _, err = cli(stream_main, digits_onnx, clip, "--loop", "2", "--jsonl", lines)
    assert code == 0, err
    recs = _jsonl(lines)
    assert [r["frame"] for r in recs] == list(range(30))
    times = [r["time"] for r in recs]
    assert times == sorted(times) and times[-1] == pytest.approx(29 / FPS, abs=0.02)
    ts = tmp_path / "clip.data"  # MPEG-TS under a name that says nothing
    with av.open(str(ts), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        for i in range(8):
            for p in s.encode(av.VideoFrame.from_image(_picture(i))):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for args in (["--input-format", "mpegts"], ["--input-option", "format=mpegts"]):
        code, out, err = cli(stream_main, digits_onnx, ts, *args, "-k", "1")
        assert code == 0 and len(out.splitlines()) == 8, (args, err)
    code, _, err = cli(stream_main, digits_onnx, ts, "--input-format", "nosuchdemuxer")
    assert code == 2 and "cannot open video file" in err and err.count("\n") == 1, err


def test_http_and_udp_streams_are_live_and_an_explicit_choice_wins():
    assert parse_source(["http://cam.local:8080/live.ts"]).live
    assert parse_source(["http://cam.local:8080/stream"]).live
    assert parse_source(["https://cdn.example/playlist.m3u8"]).live
    assert not parse_source(["https://example.org/clip.mp4"]).live
    assert not parse_source(["http://cam.local:8080/live.ts"], live=False).live
    assert parse_source(["udp://0.0.0.0:5000"]).live
    specs = parse_sources(["rtsp://a/1", "rtsp://b/2"], ["udp://0.0.0.0:5000"])
    assert [s.target for s in specs] == ["rtsp://a/1", "rtsp://b/2", "udp://0.0.0.0:5000"]


@pytest.mark.parametrize("args, message", [
    (["{clip}", "--reconnect", "3"], "--reconnect applies to network streams and cameras"),
    (["{frames}", "--reconnect", "3"], "--reconnect applies to network streams and cameras"),
    (["rtsp://127.0.0.1:9/x", "--loop"], "--loop applies to video files"),
    (["{clip}", "--input-codec", "h264"], "--input-codec applies to rtp:// sources"),
    (["rtp://127.0.0.1:5004", "--input-codec", "theora"], "--input-codec theora: not one of"),
    (["--source", "{clip}", "--source", "{clip}", "--output", "{tmp}/one.mkv"], "give one --output per stream"),
    (["gopher://host/x"], "unsupported source"),
    ([], "give a source"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    clip = _write_video(tmp_path / "clip.mp4", 2)
    frames = tmp_path / "frames"
    frames.mkdir()
    _picture(0).save(frames / "a.png")
    args = [a.format(clip=clip, frames=frames, tmp=tmp_path) for a in args]
    code, out, err = cli(stream_main, tmp_path / "model.onnx", *args)  # refused before the model is read
    assert code == 2 and out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1, err


# --- csi:// and GStreamer: opened on a worker, --timeout honoured, the missing element named -----------------
def _fake_cv2(capture):
    return types.SimpleNamespace(__version__="4.8.0", CAP_GSTREAMER=1800, CAP_PROP_FPS="fps",
                                 CAP_PROP_POS_MSEC="ms", VideoCapture=capture,
                                 getBuildInformation=lambda: "    GStreamer:                   YES (1.22.0)\n")


def test_gstreamer_pipeline_that_never_starts_gives_up_after_timeout(monkeypatch):
    import alexnet_deploy.stream.sources as sources

    release = threading.Event()

    class Hanging:  # nvarguscamerasrc waiting forever for nvargus-daemon
        def __init__(self, pipeline, api):
            release.wait(30)

    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2(Hanging))
    monkeypatch.setattr(sources, "missing_gst_elements", lambda names: [])
    src = create_source(parse_source(["csi://0"]), timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match=r"CSI camera csi://0 did not start within 0.5 s \(--timeout\)"):
            src.open()
    finally:
        release.set()
    assert time.monotonic() - t0 < 5

    class Silent:  # starts, then never delivers a frame
        def __init__(self, pipeline, api):
            pass

        def isOpened(self):
            return True

        def read(self):
            release.clear()
            release.wait(30)
            return False, None

        def get(self, prop):
            return 0.0

        def release(self):
            pass

    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2(Silent))
    src = create_source(parse_source(["videotestsrc ! appsink"]), timeout_s=0.5).open()
    try:
        with pytest.raises(SourceError, match=r"no frame for 0.5 s \(--timeout\)"):
            next(src.frames())
    finally:
        release.set()
        src.close()


def test_missing_gstreamer_element_is_named(monkeypatch):
    import alexnet_deploy.stream.sources as sources

    assert pipeline_elements(sources.csi_pipeline("csi://0"))[:2] == ["nvarguscamerasrc", "nvvidconv"]
    assert pipeline_elements("v4l2src device=/dev/video1 ! video/x-raw,width=640 ! tee name=t t. ! queue ! "
                             "appsink") == ["v4l2src", "tee", "queue", "appsink"]

    class Refused:  # what OpenCV does when gst_parse_launch fails: a capture that is not opened
        def __init__(self, pipeline, api):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2(Refused))
    found = sources.missing_gst_elements(["videotestsrc", "nvarguscamerasrc"])
    if found is None:  # neither PyGObject nor gst-inspect-1.0 here: pretend to be a desktop's GStreamer
        monkeypatch.setattr(sources, "missing_gst_elements", lambda names: [n for n in names if n.startswith("nv")])
    else:
        assert "nvarguscamerasrc" in found  # this machine's real GStreamer (not a Jetson)
    with pytest.raises(sources.UserInputError, match=r"CSI camera csi://0 cannot start: GStreamer element\(s\) "
                                                     r"nvarguscamerasrc, nvvidconv not installed"):
        create_source(parse_source(["csi://0"]), timeout_s=1).open()


# --- issue 20 item 13: FIFOs in folders, a full disk, a read-only folder ------------------------------------
def test_fifo_in_an_image_folder_is_skipped_like_predict(cli, digits_onnx, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        _picture(i).save(folder / f"f{i}.png")
    os.mkfifo(folder / "f9.png")
    code, out, err = cli(stream_main, digits_onnx, folder, "-k", "1")
    assert code == 0, err
    assert len(out.splitlines()) == 3 and "f9.png is not a regular file; skipped" in err
    assert "unreadable 1" in err


def test_output_onto_a_full_disk_is_reported_as_such(cli, digits_onnx, tmp_path):
    clip = _write_video(tmp_path / "clip.mkv", 300)
    with mounted_tmpfs(tmp_path / "small", "size=96k") as small:
        code, _, err = cli(stream_main, digits_onnx, clip, "--output", small / "out.mkv", "--codec", "ffv1",
                           "--jsonl", "none")
        left = list(small.iterdir())
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "disk is full" in last and "out.mkv" in last and "classified frame(s)" in last, err
    assert "no frame was classified" not in err and not left  # no temporary left on the full disk


def test_jsonl_onto_a_full_disk_is_reported_and_the_video_still_finalized(cli, digits_onnx, tmp_path):
    clip = _write_video(tmp_path / "clip.mkv", 200)
    with mounted_tmpfs(tmp_path / "small", "size=16k") as small:
        code, _, err = cli(stream_main, digits_onnx, clip, "--jsonl", small / "x.jsonl", "--output",
                           tmp_path / "out.mkv")
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: --jsonl ") and "x.jsonl: writing the JSON lines failed after" in last
    assert "the disk is full" in last and "annotated video" in err
    assert 0 < _decoded_frames(tmp_path / "out.mkv") < 200


def test_jsonl_and_summary_into_a_read_only_folder_name_the_problem(cli, digits_onnx, tmp_path):
    clip = _write_video(tmp_path / "clip.mp4", 2)
    if os.geteuid() == 0:
        ro_cm = mounted_tmpfs(tmp_path / "ro", "ro,size=64k")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        ro_cm = contextlib.nullcontext(ro)
    with ro_cm as ro:
        for option in ("--jsonl", "--summary"):
            code, _, err = cli(stream_main, digits_onnx, clip, option, ro / "x.json")
            assert code == 2 and err.count("\n") == 1, err
            assert err.startswith(f"error: {option} ") and "choose another --output" not in err
            assert "read-only file system" in err.lower() or "not writable" in err, err
