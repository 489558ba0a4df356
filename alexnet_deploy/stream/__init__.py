"""Classify a stream of frames (image files, video files, V4L2 cameras, RTSP/HTTP, GStreamer / Jetson CSI).

``sources`` turns a source spec into frames (PyAV, or OpenCV's GStreamer backend), ``pipeline`` runs decode,
preprocess, inference and output in their own threads joined by bounded ``queues``, ``overlay`` draws the result
on a frame, ``sinks`` write JSON lines and the annotated video, ``summary`` keeps the latency statistics.
Nothing here imports torch.
"""
from alexnet_deploy.stream.pipeline import StreamOptions, StreamPipeline, StreamResult
from alexnet_deploy.stream.sources import open_source, parse_source

__all__ = ["StreamOptions", "StreamPipeline", "StreamResult", "open_source", "parse_source"]
