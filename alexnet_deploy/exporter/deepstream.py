"""DeepStream export: an ONNX classifier for ``gst-nvinfer`` with its normalization in the graph, the nvinfer
config, DeepStream's label file and a sample ``deepstream-app`` config that plays a file.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels: one scale for all channels, so
a per-channel std (torchvision's Normalize) cannot be expressed. The exported graph takes float 0..255 RGB
NCHW and does Div(255) -> Sub(mean) -> Div(std) itself, so the config uses ``net-scale-factor=1`` and
``offsets=0;0;0`` (exact in float32: nvinfer hands the pixels through unchanged). The graph ends in softmax,
as nvinfer's default classifier parser reads probabilities and compares them with ``classifier-threshold``.
Keys follow gstnvinfer_property_parser.h (network-type 1 = classifier; network-mode 0 fp32, 1 int8, 2 fp16).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.exporter.derived import (
    Source,
    check_labels,
    finish,
    load_source,
    output_paths,
    safe_stem,
    verify,
)
from alexnet_deploy.fileio import atomic_path, atomic_write_bytes, printable_path, sha256_file
from alexnet_deploy.parity.compare import ParityReport

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # NvDsInferNetworkMode
NETWORK_TYPE_CLASSIFIER = 1  # NvDsInferNetworkType_Classifier
MODEL_COLOR_FORMAT_RGB = 0
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear
NET_SCALE_FACTOR = 1.0  # the graph takes 0..255 pixels as nvinfer produces them with scale 1, offsets 0
OFFSETS = (0.0, 0.0, 0.0)
OUTPUT_NAME = "probabilities"
INFER_CONFIG, APP_CONFIG, LABELS, CALIB = "config_infer_primary_alexnet.txt", "deepstream_app_config.txt", \
    "labels.txt", "calib.table"
SAMPLE_VIDEO = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_720p.mp4"


@dataclass
class DeepStreamOptions:
    precision: str = "auto"  # auto (the model's) | fp32 | fp16 | int8
    batch_size: int = 1
    threshold: float = 0.5  # classifier-threshold: the top probability must exceed it for a label
    gpu_id: int = 0
    calib_cache: str | None = None  # TensorRT <= 10 calibration cache for implicit INT8 of an FP32 model
    video_uri: str = SAMPLE_VIDEO
    check: bool = True


@dataclass
class DeepStreamExport:
    dir: Path
    files: dict[str, Path]
    network_mode: int
    report: ParityReport | None
    notes: list[str] = field(default_factory=list)


def _precision(source: Source, opts: DeepStreamOptions) -> str:
    have = source.meta.precision
    want = have if opts.precision == "auto" else opts.precision
    if want not in NETWORK_MODE:
        raise UserInputError(f"unknown precision {opts.precision!r}; choose auto, fp32, fp16 or int8")
    if have != "fp32" and want != have:
        raise UserInputError(f"{source.path.name} is a {have} model; DeepStream runs it with its own precision "
                             f"({have}), not {want}: give the FP32 model for another precision")
    if want == "int8" and have == "fp32" and not opts.calib_cache:
        raise UserInputError("INT8 from an FP32 model needs --calib-cache (a TensorRT <= 10 calibration cache, from "
                             "alexnet-export trt --precision int8 --calib-cache), or give an alexnet-calibrate INT8 model")
    if opts.calib_cache and not (want == "int8" and have == "fp32"):
        raise UserInputError("--calib-cache applies to INT8 from an FP32 model only (a QDQ INT8 model carries its scales)")
    return want


def _read_calib_cache(path: str, source: Source) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read --calib-cache {printable_path(path)}: {exc.strerror}") from None
    first = data.split(b"\n", 1)[0]
    if not first.startswith(b"TRT-"):
        raise UserInputError(f"--calib-cache {printable_path(path)} is not a TensorRT calibration cache "
                             "(its first line should read TRT-<version>-<algorithm>)")
    from alexnet_deploy.calibration.cache import sidecar

    side = sidecar(Path(path))
    if side.exists():
        import json

        try:
            made_from = json.loads(side.read_text()).get("source_onnx_sha256")
        except (OSError, ValueError):
            made_from = None
        if made_from and made_from not in (source.sha256, source.meta.extra.get("fp32_source_sha256")):
            raise UserInputError(f"--calib-cache {printable_path(path)} was made from another model "
                                 f"(sha256 {made_from[:12]}), not {source.path.name}")
    return data


def labels_file(class_names: list[str]) -> str:
    """DeepStream's classifier label file: one line per output layer, that layer's labels separated by ';'."""
    check_labels(class_names, ";", "DeepStream")
    return ";".join(class_names) + "\n"


def infer_config(*, onnx_name: str, engine_name: str, labels_name: str, batch_size: int, network_mode: int,
                 input_hw: tuple[int, int], threshold: float, gpu_id: int, calib_name: str | None) -> str:
    h, w = input_hw
    lines = [
        "# gst-nvinfer config written by alexnet-export deepstream. Normalization is inside the ONNX graph:",
        "# nvinfer's y = net-scale-factor * (x - offsets) is the identity here, so the pixels reach the graph as 0..255",
        "[property]",
        f"gpu-id={gpu_id}",
        f"net-scale-factor={NET_SCALE_FACTOR!r}",
        "offsets=" + ";".join(repr(o) for o in OFFSETS),
        f"model-color-format={MODEL_COLOR_FORMAT_RGB}",
        f"onnx-file={onnx_name}",
        "# written by nvinfer on the first run (TensorRT builds it on the device), reused afterwards",
        f"model-engine-file={engine_name}",
        *([f"int8-calib-file={calib_name}"] if calib_name else []),
        f"labelfile-path={labels_name}",
        f"batch-size={batch_size}",
        "# 0=FP32 1=INT8 2=FP16",
        f"network-mode={network_mode}",
        "# 1=classifier",
        f"network-type={NETWORK_TYPE_CLASSIFIER}",
        f"infer-dims=3;{h};{w}",
        f"output-blob-names={OUTPUT_NAME}",
        "# 1=primary: classify the full frame",
        "process-mode=1",
        "gie-unique-id=1",
        f"classifier-threshold={threshold!r}",
        "# the frame is stretched to the input size (no crop; see alexnet-parity --preprocess stretch)",
        "maintain-aspect-ratio=0",
        f"scaling-filter={SCALING_FILTER_BILINEAR}",
        "",
    ]
    return "\n".join(lines)


def app_config(*, infer_config_name: str, video_uri: str, batch_size: int, gpu_id: int) -> str:
    """A deepstream-app config: one file source, the classifier as primary GIE, on-screen display."""
    return "\n".join([
        "# deepstream-app -c deepstream_app_config.txt   (plays the file with the classifier's label drawn on it)",
        "[application]",
        "enable-perf-measurement=1",
        "perf-measurement-interval-sec=5",
        "",
        "[tiled-display]",
        "enable=1", "rows=1", "columns=1", "width=1280", "height=720", f"gpu-id={gpu_id}", "nvbuf-memory-type=0",
        "",
        "[source0]",
        "enable=1",
        "# 3=URI (file:// or rtsp://)",
        "type=3",
        f"uri={video_uri}",
        "num-sources=1",
        f"gpu-id={gpu_id}",
        "cudadec-memtype=0",
        "",
        "[streammux]",
        f"gpu-id={gpu_id}", "live-source=0", f"batch-size={batch_size}", "batched-push-timeout=40000",
        "width=1280", "height=720", "enable-padding=0", "nvbuf-memory-type=0",
        "",
        "[primary-gie]",
        "enable=1", f"gpu-id={gpu_id}", "gie-unique-id=1", "nvbuf-memory-type=0",
        f"config-file={infer_config_name}",
        "",
        "[osd]",
        "enable=1", f"gpu-id={gpu_id}", "border-width=2", "text-size=15", "text-color=1;1;1;1",
        "text-bg-color=0.3;0.3;0.3;1", "font=Serif", "show-clock=0", "nvbuf-memory-type=0",
        "",
        "[sink0]",
        "enable=1",
        "# 2=EGL window (on screen); 1=fakesink for headless runs",
        "type=2", "sync=1", f"gpu-id={gpu_id}", "nvbuf-memory-type=0",
        "",
        "[tests]",
        "file-loop=0",
        "",
    ])


def deepstream_graph(source: Source):
    """Source model -> (ONNX taking float 0..255 NCHW RGB, ending in softmax; its metadata)."""
    from alexnet_deploy.exporter.input_format import add_pixel_input, probabilities_output, strip_pixel_input

    model, meta = strip_pixel_input(source.model, source.meta)
    model, meta = add_pixel_input(model, meta, "float-0-255")
    model, meta = probabilities_output(model, meta, OUTPUT_NAME)
    extra = {**meta.extra, "target": "deepstream", "derived_from_sha256": source.sha256}
    return model, replace(meta, extra=extra)


def nvinfer_input(pixels: np.ndarray) -> np.ndarray:
    """What nvinfer hands the network for RGB pixels (N, H, W, 3) with net-scale-factor=1, offsets=0:
    planar float32 (N, 3, H, W), y = 1 * (x - 0)."""
    x = np.asarray(pixels, dtype=np.uint8).transpose(0, 3, 1, 2).astype(np.float32)
    return np.float32(NET_SCALE_FACTOR) * (x - np.asarray(OFFSETS, np.float32).reshape(1, 3, 1, 1))


def export_deepstream(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                      opts: DeepStreamOptions | None = None) -> DeepStreamExport:
    opts = opts or DeepStreamOptions()
    source = load_source(model_path)
    meta = source.meta
    if opts.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if meta.batch is not None and meta.batch != opts.batch_size:
        raise UserInputError(f"{source.path.name} has a static batch of {meta.batch}; use --batch-size {meta.batch} "
                             "or export the ONNX with a dynamic batch")
    if not opts.video_uri or any(ord(ch) < 32 or ch == "\x7f" for ch in opts.video_uri):
        raise UserInputError("--video must be one line (a URI such as file:///path/video.mp4)")
    if not 0.0 <= opts.threshold <= 1.0:
        raise UserInputError(f"--threshold is a probability (0..1), got {opts.threshold}")
    precision = _precision(source, opts)
    label_text = labels_file(meta.class_names)
    calib = _read_calib_cache(opts.calib_cache, source) if opts.calib_cache else None
    onnx_name = safe_stem(source.path) + "_deepstream.onnx"
    names = {"the ONNX model": onnx_name, "the label file": LABELS, "the nvinfer config": INFER_CONFIG,
             "the deepstream-app config": APP_CONFIG}
    if calib is not None:
        names["the calibration cache"] = CALIB
    paths = output_paths(out_dir, source.path, names)
    if calib is not None and os.path.realpath(opts.calib_cache) == os.path.realpath(paths["the calibration cache"]):
        calib = None  # already in place
    model, dmeta = deepstream_graph(source)
    data = finish(model, dmeta)
    report = None
    with atomic_path(paths["the ONNX model"]) as tmp:
        tmp.write_bytes(data)
        if opts.check:
            report = verify(source, tmp, dmeta, nvinfer_input, "DeepStream")
    if calib is not None:
        atomic_write_bytes(paths["the calibration cache"], calib)
    atomic_write_bytes(paths["the label file"], label_text.encode())
    mode = NETWORK_MODE[precision]
    engine_name = f"{onnx_name}_b{opts.batch_size}_gpu{opts.gpu_id}_{precision}.engine"
    c = meta.preprocessing.crop
    atomic_write_bytes(paths["the nvinfer config"], infer_config(
        onnx_name=onnx_name, engine_name=engine_name, labels_name=LABELS, batch_size=opts.batch_size,
        network_mode=mode, input_hw=(c, c), threshold=opts.threshold, gpu_id=opts.gpu_id,
        calib_name=CALIB if "the calibration cache" in paths else None).encode())
    atomic_write_bytes(paths["the deepstream-app config"], app_config(
        infer_config_name=INFER_CONFIG, video_uri=opts.video_uri, batch_size=opts.batch_size,
        gpu_id=opts.gpu_id).encode())
    notes = [f"sha256 of {onnx_name}: {sha256_file(paths['the ONNX model'])[:12]}"]
    return DeepStreamExport(Path(out_dir), paths, mode, report, notes)
