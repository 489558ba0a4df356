"""ONNX -> TensorRT engine (.plan) + manifest, with the TensorRT Python API (tensorrt 10/11 or tensorrt_rtx).

One ``--precision`` switch for the user; the path taken depends on the library:
  strongly typed (TensorRT 11, TensorRT-RTX): fp16 builds from an FP16 ONNX, int8 from a QDQ ONNX (both made
  on the fly from an FP32 ONNX by the exporter / calibration modules);
  TensorRT <= 10: builder flags (FP16, INT8) and, for an FP32 ONNX at int8, the INT8 calibrator + cache.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from alexnet_deploy.errors import EngineBuildError, UserInputError
from alexnet_deploy.fileio import (atomic_path, atomic_write_bytes, atomic_write_json, check_writable, sha256_bytes,
                                   sha256_file)
from alexnet_deploy.onnxgraph import module_of_node
from alexnet_deploy.runtime.metadata import read_onnx_metadata
from alexnet_deploy.runtime.trt_library import (MANIFEST_SCHEMA, TrtLibrary, gpu_properties, load_library,
                                                manifest_path, platform_info)

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}


@dataclass
class TrtBuildOptions:
    precision: str = "fp32"
    library: str = "auto"
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mb: int = 1024
    timing_cache: str | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    compute_capability: str | None = None  # TensorRT-RTX without a GPU: e.g. "sm86"
    # INT8 inputs (QDQ calibration on strongly typed libraries, the calibrator on TensorRT <= 10)
    calib_dataset: str = "digits"
    calib_images: int = 500  # MLPerf's calibration-set size
    calib_method: str = "entropy"  # QDQ ranges on strongly typed libraries (TensorRT's own default calibrator)
    qdq_placement: str = "tensorrt"  # Q/DQ on the inputs of Conv/Gemm only (see calibration/placement.py)
    calib_cache: str | None = None
    calib_algorithm: str = "entropy2"
    force_cache: bool = False


@dataclass
class BuildResult:
    engine: Path
    manifest: dict
    seconds: float
    extra_files: list[Path] = field(default_factory=list)


class _Logger:
    """A trt.ILogger that keeps errors for the one-line message and forwards the rest to logging."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                    log.debug("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.info("TensorRT: %s", msg)

        return Logger()


def _profile(opts: TrtBuildOptions, static_batch: int | None) -> dict:
    if static_batch:
        given = [b for b in (opts.min_batch, opts.opt_batch, opts.max_batch) if b is not None]
        if any(b != static_batch for b in given):
            raise UserInputError(f"the ONNX model has a static batch of {static_batch}; a profile of "
                                 f"{given} cannot apply (re-export with a dynamic batch)")
        return {"min": static_batch, "opt": static_batch, "max": static_batch}
    lo = opts.min_batch or 1
    hi = opts.max_batch or max(32, lo)
    opt = opts.opt_batch or min(max(8, lo), hi)
    if not (1 <= lo <= opt <= hi):
        raise UserInputError(f"bad optimization profile: need 1 <= --min-batch ({lo}) <= --opt-batch ({opt}) "
                             f"<= --max-batch ({hi})")
    return {"min": lo, "opt": opt, "max": hi}


def _parse(trt, lib: TrtLibrary, logger, onnx_path: Path, strongly_typed: bool):
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if lib.major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and lib.name == "tensorrt":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = err.node_name() if hasattr(err, "node_name") else ""
            op = err.node_operator() if hasattr(err, "node_operator") else ""
            module = module_of_node(node)
            where = f"ONNX node {node!r}" + (f" ({op})" if op else "") + (f", PyTorch module {module}" if module else "")
            errors.append(f"{where}: {err.desc()}" if node else err.desc())
        raise EngineBuildError(f"{lib.name} cannot parse {onnx_path.name}: " + " | ".join(errors or ["unknown error"]))
    return builder, network, parser


def _derived_onnx(onnx_path: Path, meta, opts: TrtBuildOptions, lib: TrtLibrary, engine: Path, echo) -> tuple[Path, str]:
    """The ONNX the strongly typed builder needs for ``opts.precision`` (made on the fly from FP32)."""
    if opts.precision == meta.precision or not lib.strongly_typed:
        return onnx_path, meta.precision
    if meta.precision != "fp32":
        raise UserInputError(f"{onnx_path.name} is {meta.precision}; pass the FP32 ONNX to build an {opts.precision} engine")
    if opts.precision == "fp16":
        from alexnet_deploy.exporter.fp16 import to_fp16
        from alexnet_deploy.runtime.metadata import set_metadata

        out = engine.with_name(engine.stem + ".fp16.onnx")
        model = to_fp16(onnx.load(str(onnx_path)))
        set_metadata(model, dataclasses.replace(meta, precision="fp16", fp32_onnx_sha256=sha256_file(onnx_path)))
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
        echo(f"made FP16 ONNX {out.name} for the strongly typed {lib.name} builder")
        return out, "fp16"
    from alexnet_deploy.calibration.run import calibrate

    out = engine.with_name(engine.stem + ".int8.onnx")
    echo(f"calibrating a QDQ INT8 ONNX ({out.name}) for the strongly typed {lib.name} builder")
    # --calib-cache here is alexnet-calibrate's range cache (checked against its provenance, reused when the
    # model, data and method match): what a strongly typed build calibrates with instead of TensorRT's calibrator
    calibrate(onnx_path, out, dataset=opts.calib_dataset, num_images=opts.calib_images, method=opts.calib_method,
              placement=opts.qdq_placement, cache=opts.calib_cache, echo=echo)
    return out, "int8"


def build_engine(onnx_path: str | Path, output: str | Path, opts: TrtBuildOptions | None = None,
                 echo=print) -> BuildResult:
    opts = opts or TrtBuildOptions()
    onnx_path, output = Path(onnx_path), check_writable(output)
    if opts.precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {opts.precision!r}; choose {', '.join(PRECISIONS)}")
    if opts.hardware_compatibility not in HARDWARE_COMPAT:
        raise UserInputError(f"--hardware-compatibility must be one of {', '.join(HARDWARE_COMPAT)}")
    if not onnx_path.is_file():
        raise UserInputError(f"ONNX model not found: {onnx_path}")
    meta = read_onnx_metadata(onnx_path)  # also rejects unreadable / metadata-less models with one line
    from alexnet_deploy.runtime.runners.factory import check_onnx_contract

    check_onnx_contract(onnx_path, meta)  # one image input, one [N, C] output: before any build work
    lib = load_library(opts.library)
    trt = lib.module
    profile = _profile(opts, meta.batch)
    src_meta_precision = meta.precision
    calib = (meta.extra or {}).get("calibration")
    params = calib.get("parameters") if isinstance(calib, dict) else None
    placement = params.get("placement") if isinstance(params, dict) else None
    if meta.precision == "int8":
        from alexnet_deploy.calibration.placement import require_tensorrt_qdq

        require_tensorrt_qdq(onnx.load(str(onnx_path)), onnx_path.name)  # ort placement: UINT8, INT32 bias
    if placement == "all":  # Q/DQ pairs placed for ONNX Runtime's CPU kernels, not TensorRT's guidance
        echo(f"note: {onnx_path.name} was calibrated with --placement all (for ONNX Runtime); for "
             "TensorRT calibrate with alexnet-calibrate --placement tensorrt or pass the FP32 ONNX")
    if opts.calib_cache and not (opts.precision == "int8" and meta.precision == "fp32"):  # was ignored silently
        raise UserInputError(f"--calib-cache is not used by this build (an {opts.precision} engine from a "
                             f"{meta.precision} ONNX calibrates nothing); drop it")
    build_onnx, onnx_precision = _derived_onnx(onnx_path, meta, opts, lib, output, echo)
    try:
        return _build(trt, lib, meta, opts, onnx_path, output, build_onnx, onnx_precision, profile,
                      src_meta_precision, echo)
    except BaseException:  # a failed or interrupted build leaves no derived ONNX next to the engine
        if build_onnx != onnx_path:
            build_onnx.unlink(missing_ok=True)
        raise


def _build(trt, lib: TrtLibrary, meta, opts: TrtBuildOptions, onnx_path: Path, output: Path, build_onnx: Path,
           onnx_precision: str, profile: dict, src_meta_precision: str, echo) -> BuildResult:
    """Parse ``build_onnx`` and build the engine (the part of :func:`build_engine` after its inputs are checked)."""
    extra_files = [build_onnx] if build_onnx != onnx_path else []
    if lib.strongly_typed and onnx_precision != opts.precision:
        raise UserInputError(f"{lib.name} is strongly typed: a {opts.precision} engine needs a {opts.precision} ONNX")
    logger = _Logger(trt)
    builder, network, _parser = _parse(trt, lib, logger, build_onnx, lib.strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    inp = network.get_input(0)
    if network.num_inputs != 1:
        raise EngineBuildError(f"expected one network input, found {network.num_inputs}")
    c, h, w = meta.input_dims  # the graph input's own layout: (H, W, 3) for a uint8-nhwc raw-pixel model
    prof = builder.create_optimization_profile()
    prof.set_shape(inp.name, (profile["min"], c, h, w), (profile["opt"], c, h, w), (profile["max"], c, h, w))
    config.add_optimization_profile(prof)
    path, calib_info = "fp32", {}
    if lib.strongly_typed:
        path = {"fp32": "fp32", "fp16": "strongly-typed-fp16-onnx", "int8": "strongly-typed-qdq-int8"}[opts.precision]
    elif opts.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        path = "builder-flag-fp16"
        if opts.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if onnx_precision == "int8":
                path = "qdq-explicit-int8"
            else:
                path, calib_info = "implicit-int8-calibrator", _attach_calibrator(trt, config, build_onnx, meta, opts, output)
    built_meta = meta if build_onnx == onnx_path else read_onnx_metadata(build_onnx)
    if opts.precision == "int8" and onnx_precision == "int8":
        calib_info = built_meta.extra.get("calibration") or {}
    gpu = gpu_properties()
    cc_target = _compute_capability(trt, lib, config, opts, gpu)
    if opts.dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise UserInputError("--dla-core: this platform has no DLA cores (Jetson AGX/NX Orin and Xavier do)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(opts.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if opts.version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise UserInputError(f"{lib.name} {lib.version} has no version-compatible engines")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts.hardware_compatibility != "none":
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise UserInputError(f"{lib.name} {lib.version} has no hardware-compatibility levels")
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HARDWARE_COMPAT[opts.hardware_compatibility])
    timing = _load_timing_cache(config, opts.timing_cache)
    echo(f"building {opts.precision} engine with {lib.name} {lib.version} ({path}), batch "
         f"{profile['min']}..{profile['max']} (opt {profile['opt']})...")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        detail = logger.errors[-1] if logger.errors else "no error message from TensorRT"
        raise EngineBuildError(f"{lib.name} could not build an engine from {build_onnx.name}: {detail}")
    data = bytes(serialized)
    if opts.timing_cache:
        timing["saved"] = _save_timing_cache(config, opts.timing_cache)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "engine_sha256": sha256_bytes(data),
        "engine_bytes": len(data),
        "library": {"name": lib.name, "version": lib.version, "strongly_typed": lib.strongly_typed},
        "gpu": gpu,
        "target_compute_capability": cc_target,
        "precision": opts.precision,
        "precision_path": path,
        "source_onnx": str(onnx_path.resolve()),
        "source_onnx_sha256": sha256_file(onnx_path),
        "source_onnx_precision": src_meta_precision,
        "built_onnx": str(build_onnx.resolve()),
        "built_onnx_sha256": sha256_file(build_onnx),
        "source_weights_sha256": meta.source_sha256,
        "input": {"name": inp.name, "shape": [-1 if profile["min"] != profile["max"] else profile["min"], c, h, w]},
        "output": {"name": network.get_output(0).name},
        "build": {"profile": profile, "static": meta.batch is not None, "workspace_mb": opts.workspace_mb,
                  "dla_core": opts.dla_core, "version_compatible": opts.version_compatible,
                  "hardware_compatibility": opts.hardware_compatibility, "timing_cache": timing,
                  "calibration": calib_info, "seconds": round(seconds, 3)},
        "platform": platform_info(),
        "metadata": built_meta.to_props(),
    }
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
        atomic_write_json(manifest_path(output), manifest)
    echo(f"built {output} ({len(data) / 1e6:.1f} MB) in {seconds:.1f} s; manifest {manifest_path(output).name}")
    return BuildResult(output, manifest, seconds, extra_files)


def _compute_capability(trt, lib: TrtLibrary, config, opts: TrtBuildOptions, gpu) -> str | None:
    """TensorRT-RTX builds ahead of time for named compute capabilities; without a GPU one must be named."""
    if lib.name != "tensorrt_rtx" or not hasattr(trt, "ComputeCapability"):
        if opts.compute_capability:
            raise UserInputError("--compute-capability applies to TensorRT-RTX only")
        return gpu["compute_capability"] if gpu else None
    want = (opts.compute_capability or ("current" if gpu else "sm86")).upper()
    if not hasattr(trt.ComputeCapability, want):
        choices = ", ".join(m.lower() for m in trt.ComputeCapability.__members__ if m != "NONE")
        raise UserInputError(f"unknown --compute-capability {want.lower()}; {lib.name} knows {choices}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, want), 0)
    return want.lower()


def _load_timing_cache(config, path: str | None) -> dict:
    info = {"path": path, "loaded_bytes": 0}
    if not path:
        return info
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TensorRT-RTX: timing caches are no-ops
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    info["loaded_bytes"] = len(data)
    return info


def _save_timing_cache(config, path: str) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = bytes(config.get_timing_cache().serialize())
    atomic_write_bytes(path, data)
    return len(data)


def _attach_calibrator(trt, config, onnx_path: Path, meta, opts: TrtBuildOptions, engine: Path) -> dict:
    """TensorRT <= 10 with an FP32 ONNX: implicit INT8 through the calibrator and its cache."""
    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.trt_calibrator import CalibrationFeeder, make_calibrator

    cal = load_calibration_set(opts.calib_dataset, meta, opts.calib_images)
    cache = Path(opts.calib_cache or engine.with_name(engine.stem + ".calib.cache"))
    prov = {"source_onnx_sha256": sha256_file(onnx_path), "preprocessing": meta.preprocessing.to_dict(),
            "method": opts.calib_algorithm, "parameters": {"batch": 8}, **cal.provenance()}
    feeder = CalibrationFeeder(cal.x, 8, cache, prov, opts.force_cache)
    config.int8_calibrator = make_calibrator(trt, feeder, opts.calib_algorithm)
    return {"cache": str(cache), **{k: prov[k] for k in ("method", "num_images", "data_sha256", "dataset")}}


__all__ = ["TrtBuildOptions", "BuildResult", "build_engine", "PRECISIONS"]
