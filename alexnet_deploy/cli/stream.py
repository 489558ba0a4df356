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

Prints one JSON line per frame (top-k, timestamps, per-stage latency) and a summary on stderr. Cameras and
streams drop the oldest frames when inference falls behind (counted); files never drop. Ctrl-C or SIGTERM
stops cleanly: the --output video is finalized and playable, the summary printed (exit status 128 + signal).
"""


@click.command(help=SOURCE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
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
@click.option("--output", "-o", type=click.Path(), default=None,
              help="Annotated frames (top-k scores and FPS drawn on each): a video file (.mp4 .mkv .mov .avi "
                   ".ts), an image sequence (frames/%05d.jpg, .png), rtsp://host:port/path (publish to an RTSP "
                   "server), rtp://host:port (RTP/MPEG-TS) or udp://host:port (MPEG-TS).")
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
              show_default=True, help="Seconds to wait for a camera or stream to open, and for each read.")
@click.option("--rebuild-if-stale", is_flag=True, help="Engines: rebuild from the recorded ONNX when stale.")
@click.option("--progress/--no-progress", default=None, help="Progress display (default: when stderr is a terminal).")
@_handle_errors
def stream_cmd(model, sources, engine, variant, batch, top_k, max_fps, max_frames, duration_s, output, codec,
               bitrate, encoder_options, jsonl, summary_path, live, input_options, timeout_s, rebuild_if_stale, progress):
    _setup_logging()
    from alexnet_deploy.fileio import atomic_write_json, check_writable
    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.stream.pipeline import StreamOptions, StreamPipeline
    from alexnet_deploy.stream.sinks import JsonLinesSink, VideoSink, check_output
    from alexnet_deploy.stream.sources import open_source, parse_source

    if engine in ("torch", "torch-cuda"):
        raise UserInputError("alexnet-stream runs exported models (ort, ort-cuda, ort-trt, trt); "
                             "export the checkpoint with alexnet-export onnx first")
    jsonl_path = None if jsonl.strip().lower() in ("", "none") else jsonl
    spec = parse_source(sources, live=live)
    refuse_overlapping_paths([("MODEL", model), *(("SOURCE", p) for p in spec.input_paths)],
                             {"--output": output, "--jsonl": jsonl_path if jsonl_path != "-" else None,
                              "--summary": summary_path})
    encoder_options = _key_values(encoder_options, "--encoder-option", "preset=fast")
    if output:  # unknown kind, encoder that cannot open, unreachable server: say so before loading anything
        check_output(output, codec, bitrate=bitrate, encoder_options=encoder_options, fps=max_fps)
    if summary_path:
        check_writable(summary_path)
    options = _key_values(input_options)
    runner = open_runner(model, engine, variant=variant, rebuild_if_stale=rebuild_if_stale)
    source = open_source(spec, options=options, timeout_s=timeout_s)
    video = records = pipeline = None
    try:
        video = VideoSink(output, fps=max_fps or source.rate, codec=codec, bitrate=bitrate,
                          encoder_options=encoder_options) if output else None
        records = JsonLinesSink(jsonl_path) if jsonl_path else None
        pipeline = StreamPipeline(
            source, runner,
            StreamOptions(batch=batch, top_k=top_k, max_fps=max_fps, max_frames=max_frames, duration_s=duration_s),
            video=video, on_record=records.write if records else None,
            progress=sys.stderr.isatty() if progress is None else progress)
        result = pipeline.run()  # SIGTERM / SIGHUP arrive as KeyboardInterrupt (cli.common), handled inside
    finally:
        if pipeline is None or not pipeline.owns_source:
            source.close()
        if records is not None:
            records.close()
        if video is not None and video.pending:  # never ran (an error before the pipeline started)
            video.close(keep=False)
    stats = result.stats
    click.echo(stats.format(), err=True)
    if output:
        if result.video_kept:
            click.echo(video.describe(), err=True)
        else:
            click.echo(f"nothing written to {output} (no frame was classified)", err=True)
    if summary_path:
        atomic_write_json(summary_path, stats.to_dict() | {"model": str(model), "output": output,
                                                           "video_frames": video.frames if video else None})
    if result.error is not None:
        raise result.error
    if result.interrupted:
        sys.exit(128 + signal.SIGINT)  # cli.common reports the signal that actually came (143 for SIGTERM)


def _key_values(items, option: str = "--input-option", example: str = "video_size=1280x720") -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        out[key.strip()] = value
    return out
