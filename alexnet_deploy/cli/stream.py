"""`alexnet-stream` command: classify a video file, camera, network stream or image sequence frame by frame."""
from __future__ import annotations

import signal
import sys

import click

from alexnet_deploy.cli.common import _handle_errors, _setup_logging, refuse_overlapping_paths
from alexnet_deploy.errors import UserInputError

SOURCE_HELP = """Classify SOURCE frame by frame with MODEL (.onnx or a TensorRT engine).

\b
SOURCE is one of:
  images, folders or globs      photo.jpg  frames/  'shots/*.png'
  a video file                  clip.mp4  clip.mkv  clip.avi ...
  a V4L2 camera                 /dev/video0  (or just 0)
  a network stream              rtsp://host/path  http://host/feed.mjpg  udp://...
  a Jetson CSI camera           csi://0  (csi://0?width=1920&height=1080&fps=30&flip=2)
  a GStreamer pipeline          'v4l2src ! videoconvert ! appsink'  (OpenCV built with GStreamer)

Several cameras or streams (several live SOURCEs, or --source repeated) run in one process, batched into one
inference per step; each record carries its stream id, each stream gets its --output (repeatable, in order).

Prints one JSON line per frame (top-k, timestamps, per-stage latency, frame age) and a summary on stderr.
Cameras and streams never queue stale frames: the newest frame waits in a single slot, older ones are dropped
before they are converted (counted); files never drop. The model is warm before any source opens.

Exit status: 0 at the end of a file (or --max-frames / --duration); 2 when a source breaks off (a stream
cut or ended, a truncated file, no data for --timeout s), after the outputs are finalized and the summary
printed (--reconnect N retries first); 128 + signal for Ctrl-C / SIGTERM, which also finalize everything.
"""


@click.command(help=SOURCE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.argument("sources", nargs=-1, required=False, metavar="SOURCE...")
@click.option("--source", "extra_sources", multiple=True, metavar="SOURCE",
              help="One more stream (repeatable): each --source is its own stream, batched with the others.")
@click.option("--engine", default=None, help="ort | ort-cuda | ort-trt | trt (default: from MODEL).")
@click.option("--variant", default=None, help="Variant defaults for an ONNX model without alexnet-deploy metadata.")
@click.option("--batch", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Classify up to N frames per inference (files wait for N; live sources take what is there).")
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Files: pace to this rate. Live sources: skip frames above it (counted as skipped).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds.")
@click.option("--output", "-o", "outputs", type=click.Path(), multiple=True,
              help="Annotated frames (top-k scores and FPS drawn on each): a video file (.mp4 .mkv .mov .avi "
                   ".ts), an image sequence (frames/%05d.jpg, .png), rtsp://host:port/path (publish to an RTSP "
                   "server), rtp://host:port (RTP/MPEG-TS) or udp://host:port (MPEG-TS). Several streams: one "
                   "--output per stream, in order.")
@click.option("--encoder", "--codec", "codec", default=None,
              help="FFmpeg encoder for --output (default: libx264, else mpeg4), e.g. h264_nvenc or "
                   "h264_v4l2m2m where this FFmpeg has them.")
@click.option("--bitrate", default=None, metavar="BITS",
              help="Bit rate for --output, e.g. 4M or 800k (default: constant quality for files, 4M for "
                   "network outputs).")
@click.option("--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE",
              help="FFmpeg encoder option for --output, e.g. preset=fast, g=60, crf=28 (repeatable).")
@click.option("--jsonl", default="-", show_default=True, help="JSON lines file; '-' is stdout, 'none' turns them off.")
@click.option("--summary", "summary_path", type=click.Path(), default=None, help="Also write the summary as JSON.")
@click.option("--live/--no-live", default=None,
              help="Force the drop policy: --live drops the oldest frames when inference falls behind (the "
                   "default for cameras and streams), --no-live never drops (the default for files).")
@click.option("--input-option", "input_options", multiple=True, metavar="KEY=VALUE",
              help="FFmpeg option for opening the source, e.g. video_size=1280x720, input_format=mjpeg, "
                   "framerate=30, rtsp_transport=udp (repeatable).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for a camera or stream to open, and for each read: a source "
                   "silent longer has broken off.")
@click.option("--reconnect", type=click.IntRange(min=-1), default=0, show_default=True, metavar="N",
              help="Network streams and cameras: reopen a source that broke off, up to N attempts in a row "
                   "(-1: forever). Frames continue in the same JSON lines and --output.")
@click.option("--reconnect-delay", "reconnect_delay_s", type=click.FloatRange(min=0), default=2.0,
              show_default=True, metavar="S", help="Seconds between reconnect attempts.")
@click.option("--loop", type=click.IntRange(min=-1), default=0, is_flag=False, flag_value=-1, metavar="[N]",
              help="Video files: play N more times (--loop alone: forever).")
@click.option("--input-format", default=None, metavar="NAME",
              help="FFmpeg demuxer for the source (mpegts, mjpeg, h264, v4l2, ...), when it cannot be guessed.")
@click.option("--input-codec", default=None, metavar="CODEC[/PT]",
              help="rtp://host:port without an SDP file: the payload's codec (h264, hevc, mjpeg, mpegts, vp8, "
                   "vp9, mpeg4) and optionally its payload type (default 96).")
@click.option("--fail-fast", is_flag=True, help="Several streams: stop them all when one fails.")
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@click.option("--progress/--no-progress", default=None, help="Progress display (default: when stderr is a terminal).")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def stream_cmd(model, sources, extra_sources, engine, variant, batch, top_k, max_fps, max_frames, duration_s,
               outputs, codec, bitrate, encoder_options, jsonl, summary_path, live, input_options, timeout_s,
               reconnect, reconnect_delay_s, loop, input_format, input_codec, fail_fast, rebuild_if_stale,
               progress):
    _setup_logging()
    from alexnet_deploy.fileio import atomic_write_json, check_writable
    from alexnet_deploy.runtime.engines import TORCH_ENGINES
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.stream.pipeline import StreamOptions, StreamPipeline
    from alexnet_deploy.stream.sinks import JsonLinesSink, VideoSink, check_output
    from alexnet_deploy.stream.sources import create_source, parse_sources

    if engine in TORCH_ENGINES:
        raise UserInputError("alexnet-stream runs exported models (ort, ort-cuda, ort-trt, trt); "
                             "export the checkpoint with alexnet-export onnx first")
    jsonl_path = None if jsonl.strip().lower() in ("", "none") else jsonl
    specs = parse_sources(sources, extra_sources, live=live, input_format=input_format, input_codec=input_codec)
    outputs = list(outputs)
    if outputs and len(outputs) != len(specs):
        raise UserInputError(f"{len(specs)} stream(s) and {len(outputs)} --output(s): give one --output per "
                             "stream, in the order of the sources")
    refuse_overlapping_paths([("MODEL", model), *(("SOURCE", p) for spec in specs for p in spec.input_paths)],
                             [*(("--output", o) for o in outputs),
                              ("--jsonl", jsonl_path if jsonl_path != "-" else None), ("--summary", summary_path)])
    encoder_options = _key_values(encoder_options, "--encoder-option", "preset=fast")
    for output in outputs:  # unknown kind, encoder that cannot open, unreachable server: before loading anything
        check_output(output, codec, bitrate=bitrate, encoder_options=encoder_options, fps=max_fps)
    if jsonl_path and jsonl_path != "-":
        _check_file_output("--jsonl", jsonl_path, check_writable)
    if summary_path:
        _check_file_output("--summary", summary_path, check_writable)
    options = _key_values(input_options)

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    streams = [create_source(spec, options=options, timeout_s=timeout_s, reconnect=reconnect,
                             reconnect_delay_s=reconnect_delay_s, loop=loop, warn=warn) for spec in specs]
    from alexnet_deploy.exporter.rebuild import rebuild_engine  # the builder a stale engine is rebuilt with

    runner = open_runner(model, engine, variant=variant, rebuild_if_stale=rebuild_if_stale,
                         rebuild=rebuild_engine if rebuild_if_stale else None)

    def make_video(sid: int, source):  # once the source is open: the video takes its frame rate
        return VideoSink(outputs[sid], fps=max_fps or source.rate, codec=codec, bitrate=bitrate,
                         encoder_options=encoder_options)

    records = pipeline = None
    try:
        records = JsonLinesSink(jsonl_path) if jsonl_path else None
        pipeline = StreamPipeline(
            streams, runner,
            StreamOptions(batch=batch, top_k=top_k, max_fps=max_fps, max_frames=max_frames, duration_s=duration_s,
                          fail_fast=fail_fast),
            video=make_video if outputs else None, on_record=records.write if records else None,
            progress=sys.stderr.isatty() if progress is None else progress)
        result = pipeline.run()  # SIGTERM / SIGHUP arrive as KeyboardInterrupt (cli.common), handled inside
    finally:
        if pipeline is None or not pipeline.owns_source:
            for source in streams:
                source.close()
        if records is not None:
            try:
                records.close()
            except OSError:  # a full disk: the run's error already says so
                if pipeline is None or pipeline.on_record is not None:
                    raise
    stats = result.stats
    click.echo(stats.format(), err=True)
    videos = [st.video for st in pipeline.streams]
    for output, video, kept, why in zip(outputs, videos, result.videos_kept, result.video_errors):
        if kept and video is not None:
            click.echo(video.describe(), err=True)
        elif why is None:
            click.echo(f"nothing written to {output} (no frame was classified)", err=True)
        # a video that failed is named by the error line below
    if summary_path:
        atomic_write_json(summary_path, stats.to_dict() | {
            "model": str(model), "output": outputs[0] if len(outputs) == 1 else (outputs or None),
            "video_frames": videos[0].frames if len(outputs) == 1 and videos[0] is not None else
            ([v.frames if v is not None else None for v in videos] if outputs else None)})
    if result.error is not None:
        raise result.error
    if result.interrupted:
        sys.exit(128 + signal.SIGINT)  # cli.common reports the signal that actually came (143 for SIGTERM)


def _check_file_output(option: str, path: str, check_writable) -> None:
    """Refuse, naming the option and the real cause (read-only file system, permission), a file that cannot be
    created where it is asked for. ``os.access`` says yes to root on a read-only mount: try a file there."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        check_writable(path)
    except UserInputError as exc:
        why = str(exc).split("; choose another")[0]
        try:
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                why = f"folder {folder} is on a read-only file system"
            elif not os.access(folder, os.W_OK):
                why = f"folder {folder} is not writable by this user (permission denied)"
        except OSError:
            pass
        raise UserInputError(f"{option} {path}: {why}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise UserInputError(f"{option} {path}: cannot create files in {folder}: "
                             f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _key_values(items, option: str = "--input-option", example: str = "video_size=1280x720") -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        out[key.strip()] = value
    return out
