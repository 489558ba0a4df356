"""ONNX -> TensorRT engine (.plan) + manifest, with the TensorRT Python API (tensorrt 10/11 or tensorrt_rtx).

One ``--precision`` switch for the user; the path taken depends on the library:
  strongly typed (TensorRT 11, TensorRT-RTX): fp16 builds from an FP16 ONNX, int8 from a QDQ ONNX (both made
  on the fly from an FP32 ONNX by the exporter / calibration modules);
  TensorRT <= 10: builder flags (FP16, INT8) and, for an FP32 ONNX at int8, the INT8 calibrator + cache
  (calibration/trt_calibrator.py). Which of these a build takes is one table, :data:`PRECISION_PLANS`.

:func:`build_engine` chains small steps, each taking the typed values earlier steps returned (the shape of
Polygraphy's NetworkFromOnnxPath -> CreateConfig -> EngineBytesFromNetwork -> SaveEngine loaders):
  check_inputs -> BuildInputs        options, the ONNX, its metadata and contract, the library, the profile
  network_onnx -> NetworkOnnx        the ONNX to parse (the source, or an FP16 / QDQ ONNX made from it)
  decide_precision -> PrecisionPlan  strongly typed or builder flags, calibrator or not
  parse_network -> ParsedNetwork     builder, network, parser
  create_config -> BuildConfig       workspace, profile, precision, target, DLA/compatibility, timing cache
  engine_bytes -> BuiltEngine        the serialized engine
  save_timing_cache, engine_manifest, save_engine (the .plan, then its manifest, atomically)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from alexnet_deploy.errors import EngineBuildError, UserInputError
from alexnet_deploy.fileio import (atomic_path, atomic_write_bytes, check_writable, json_bytes, sha256_bytes,
                                   sha256_file)
from alexnet_deploy.onnxgraph import module_of_node
from alexnet_deploy.runtime.metadata import ModelMetadata, read_onnx_metadata
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


# ------------------------------------------------------------------------------------- the values the steps pass
@dataclass(frozen=True)
class BuildInputs:
    """What :func:`check_inputs` accepted, before any build work: the source ONNX, its metadata, the library,
    the optimization profile, the options and the engine path."""
    onnx: Path
    meta: ModelMetadata
    lib: TrtLibrary
    profile: dict  # {"min", "opt", "max"} batch
    opts: TrtBuildOptions
    output: Path


@dataclass(frozen=True)
class NetworkOnnx:
    """The ONNX the builder parses: the source, or one made from it for a strongly typed builder."""
    path: Path
    precision: str
    meta: ModelMetadata  # its own metadata (a derived ONNX records fp16 / its calibration)
    derived: bool  # made on the fly next to the engine (deleted again if the build fails)


@dataclass(frozen=True)
class PrecisionPlan:
    """How one ``--precision`` is built (:func:`decide_precision`'s answer): the manifest's ``precision_path``,
    whether the network is strongly typed (the types come from the ONNX), the ``trt.BuilderFlag`` names set on
    the config, and whether TensorRT's INT8 calibrator runs."""
    path: str
    strongly_typed: bool = False
    flags: tuple[str, ...] = ()
    calibrator: bool = False


@dataclass
class ParsedNetwork:
    """Builder, network and parser of one ONNX (the parser is kept: the network refers to its weights)."""
    builder: object
    network: object
    parser: object
    logger: object  # the _Logger: the build error's one line
    onnx: NetworkOnnx
    library: str  # the library's name, for the build error

    @property
    def input(self):
        return self.network.get_input(0)

    @property
    def output_name(self) -> str:
        return self.network.get_output(0).name


@dataclass
class BuildConfig:
    """A builder config with its profile, precision, target and timing cache set, and what the manifest records."""
    config: object
    precision: PrecisionPlan
    calibration: dict  # the manifest's build.calibration
    gpu: dict | None
    target_compute_capability: str | None
    timing_cache: dict  # {"path", "loaded_bytes"} (+ "saved" once written)
    calibrator: object = None  # kept alive until the build has run


@dataclass
class BuiltEngine:
    """The serialized engine and what it was built from."""
    data: bytes
    seconds: float
    network: ParsedNetwork
    config: BuildConfig


# --------------------------------------------------------------------------------------------- the precision
# (strongly typed library, engine precision, the parsed ONNX is QDQ INT8) -> plan. Strongly typed (TensorRT 11,
# TensorRT-RTX): the ONNX's own types decide (an FP16 ONNX for fp16, a QDQ ONNX for int8). TensorRT <= 10:
# builder flags; INT8 from a QDQ ONNX is explicit, from an FP32 ONNX it needs the calibrator.
_FP16_FLAG = PrecisionPlan("builder-flag-fp16", flags=("FP16",))
PRECISION_PLANS: dict[tuple[bool, str, bool], PrecisionPlan] = {
    (True, "fp32", False): PrecisionPlan("fp32", strongly_typed=True),
    (True, "fp16", False): PrecisionPlan("strongly-typed-fp16-onnx", strongly_typed=True),
    (True, "int8", True): PrecisionPlan("strongly-typed-qdq-int8", strongly_typed=True),
    (False, "fp32", False): PrecisionPlan("fp32"),
    (False, "fp32", True): PrecisionPlan("fp32"),
    (False, "fp16", False): _FP16_FLAG,
    (False, "fp16", True): _FP16_FLAG,
    (False, "int8", True): PrecisionPlan("qdq-explicit-int8", flags=("FP16", "INT8")),
    (False, "int8", False): PrecisionPlan("implicit-int8-calibrator", flags=("FP16", "INT8"), calibrator=True),
}


def decide_precision(lib: TrtLibrary, precision: str, onnx_precision: str) -> PrecisionPlan:
    """The plan for a ``precision`` engine from an ``onnx_precision`` ONNX with ``lib`` (one table lookup)."""
    if lib.strongly_typed and onnx_precision != precision:
        raise UserInputError(f"{lib.name} is strongly typed: a {precision} engine needs a {precision} ONNX")
    return PRECISION_PLANS[(lib.strongly_typed, precision, onnx_precision == "int8")]


# -------------------------------------------------------------------------------------------------- the steps
def check_inputs(onnx_path: str | Path, output: str | Path, opts: TrtBuildOptions, echo=print) -> BuildInputs:
    """Every check that needs no build work: options, the ONNX, its metadata and contract, the library."""
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
    profile = _profile(opts, meta.batch)
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
    return BuildInputs(onnx_path, meta, lib, profile, opts, output)


def network_onnx(job: BuildInputs, echo=print) -> NetworkOnnx:
    """The ONNX the builder needs for ``job.opts.precision``: the source, or (strongly typed) an FP16 / QDQ INT8
    ONNX made on the fly from an FP32 source, next to the engine."""
    opts, meta, lib, onnx_path = job.opts, job.meta, job.lib, job.onnx
    if opts.precision == meta.precision or not lib.strongly_typed:
        return NetworkOnnx(onnx_path, meta.precision, meta, derived=False)
    if meta.precision != "fp32":
        raise UserInputError(f"{onnx_path.name} is {meta.precision}; pass the FP32 ONNX to build an {opts.precision} engine")
    if opts.precision == "fp16":
        from alexnet_deploy.exporter.fp16 import to_fp16
        from alexnet_deploy.runtime.metadata import set_metadata

        out = job.output.with_name(job.output.stem + ".fp16.onnx")
        model = to_fp16(onnx.load(str(onnx_path)))
        set_metadata(model, dataclasses.replace(meta, precision="fp16", fp32_onnx_sha256=sha256_file(onnx_path)))
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
        echo(f"made FP16 ONNX {out.name} for the strongly typed {lib.name} builder")
        return NetworkOnnx(out, "fp16", read_onnx_metadata(out), derived=True)
    from alexnet_deploy.calibration.run import calibrate

    out = job.output.with_name(job.output.stem + ".int8.onnx")
    echo(f"calibrating a QDQ INT8 ONNX ({out.name}) for the strongly typed {lib.name} builder")
    # --calib-cache here is alexnet-calibrate's range cache (checked against its provenance, reused when the
    # model, data and method match): what a strongly typed build calibrates with instead of TensorRT's calibrator
    calibrate(onnx_path, out, dataset=opts.calib_dataset, num_images=opts.calib_images, method=opts.calib_method,
              placement=opts.qdq_placement, cache=opts.calib_cache, echo=echo)
    return NetworkOnnx(out, "int8", read_onnx_metadata(out), derived=True)


def parse_network(lib: TrtLibrary, onnx_model: NetworkOnnx, strongly_typed: bool) -> ParsedNetwork:
    """Builder + network (strongly typed when the plan says so) + the ONNX parsed into it; a parse error names
    the ONNX node, its operator and the PyTorch module it came from."""
    trt = lib.module
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if lib.major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and lib.name == "tensorrt":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_model.path)):
        raise EngineBuildError(f"{lib.name} cannot parse {onnx_model.path.name}: "
                               + " | ".join(_parser_errors(parser) or ["unknown error"]))
    return ParsedNetwork(builder, network, parser, logger, onnx_model, lib.name)


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        module = module_of_node(node)
        where = f"ONNX node {node!r}" + (f" ({op})" if op else "") + (f", PyTorch module {module}" if module else "")
        errors.append(f"{where}: {err.desc()}" if node else err.desc())
    return errors


def create_config(job: BuildInputs, network: ParsedNetwork, plan: PrecisionPlan) -> BuildConfig:
    """The builder config: workspace, the optimization profile, the precision plan (flags, calibrator), the
    target compute capability, DLA, version / hardware compatibility and the timing cache."""
    trt, opts = job.lib.module, job.opts
    config = network.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    _set_profile(job, network, config)
    calibrator, calib_info = _set_precision(job, network, config, plan)
    gpu = gpu_properties()
    cc_target = _compute_capability(trt, job.lib, config, opts, gpu)
    _set_device_and_compatibility(job, network, config)
    timing = _load_timing_cache(config, opts.timing_cache)
    return BuildConfig(config, plan, calib_info, gpu, cc_target, timing, calibrator)


def _set_profile(job: BuildInputs, network: ParsedNetwork, config) -> None:
    inp = network.input
    if network.network.num_inputs != 1:
        raise EngineBuildError(f"expected one network input, found {network.network.num_inputs}")
    c, h, w = job.meta.input_dims  # the graph input's own layout: (H, W, 3) for a uint8-nhwc raw-pixel model
    lo, opt, hi = job.profile["min"], job.profile["opt"], job.profile["max"]
    prof = network.builder.create_optimization_profile()
    prof.set_shape(inp.name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(prof)


def _set_precision(job: BuildInputs, network: ParsedNetwork, config, plan: PrecisionPlan) -> tuple[object, dict]:
    """The plan's builder flags, and TensorRT's INT8 calibrator when it needs one: -> (calibrator or None, the
    manifest's calibration record: the calibrator's, or the one a QDQ ONNX's metadata carries)."""
    trt = job.lib.module
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not plan.calibrator:
        qdq = job.opts.precision == "int8" and network.onnx.precision == "int8"
        return None, (network.onnx.meta.extra.get("calibration") or {}) if qdq else {}
    from alexnet_deploy.calibration.trt_calibrator import TrtCalibration, calibrator_for

    opts, engine = job.opts, job.output
    cache = Path(opts.calib_cache or engine.with_name(engine.stem + ".calib.cache"))
    calibrator, info = calibrator_for(trt, network.onnx.path, job.meta,
                                      TrtCalibration(opts.calib_dataset, opts.calib_images, cache,
                                                     opts.calib_algorithm, opts.force_cache))
    config.int8_calibrator = calibrator
    return calibrator, info


def _set_device_and_compatibility(job: BuildInputs, network: ParsedNetwork, config) -> None:
    trt, lib, opts = job.lib.module, job.lib, job.opts
    if opts.dla_core is not None:
        if network.builder.num_DLA_cores == 0:
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


def engine_bytes(network: ParsedNetwork, config: BuildConfig) -> BuiltEngine:
    """Build the serialized engine; a failed build is one line with TensorRT's last error."""
    t0 = time.perf_counter()
    serialized = network.builder.build_serialized_network(network.network, config.config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        detail = network.logger.errors[-1] if network.logger.errors else "no error message from TensorRT"
        raise EngineBuildError(f"{network.library} could not build an engine from {network.onnx.path.name}: {detail}")
    return BuiltEngine(bytes(serialized), seconds, network, config)


def save_timing_cache(config: BuildConfig) -> None:
    """Write the config's timing cache back (atomically) when the build was given one."""
    if config.timing_cache["path"]:
        config.timing_cache["saved"] = _save_timing_cache(config.config, config.timing_cache["path"])


def engine_manifest(job: BuildInputs, built: BuiltEngine) -> dict:
    """The manifest written next to the engine: library, GPU, precision path, sources, profile, build options."""
    opts, lib, meta, profile = job.opts, job.lib, job.meta, job.profile
    network, config, build_onnx = built.network, built.config, built.network.onnx.path
    c, h, w = meta.input_dims
    return {
        "schema": MANIFEST_SCHEMA,
        "engine_sha256": sha256_bytes(built.data),
        "engine_bytes": len(built.data),
        "library": {"name": lib.name, "version": lib.version, "strongly_typed": lib.strongly_typed},
        "gpu": config.gpu,
        "target_compute_capability": config.target_compute_capability,
        "precision": opts.precision,
        "precision_path": config.precision.path,
        "source_onnx": str(job.onnx.resolve()),
        # the same file relative to the engine's folder: what is looked for first once the folder has moved
        "source_onnx_relative": os.path.relpath(job.onnx.resolve(), job.output.resolve().parent),
        "source_onnx_sha256": sha256_file(job.onnx),
        "source_onnx_precision": meta.precision,
        "built_onnx": str(build_onnx.resolve()),
        "built_onnx_sha256": sha256_file(build_onnx),
        "source_weights_sha256": meta.source_sha256,
        "input": {"name": network.input.name,
                  "shape": [-1 if profile["min"] != profile["max"] else profile["min"], c, h, w]},
        "output": {"name": network.output_name},
        "build": {"profile": profile, "static": meta.batch is not None, "workspace_mb": opts.workspace_mb,
                  "dla_core": opts.dla_core, "version_compatible": opts.version_compatible,
                  "hardware_compatibility": opts.hardware_compatibility, "timing_cache": config.timing_cache,
                  "calibration": config.calibration, "seconds": round(built.seconds, 3)},
        "platform": platform_info(),
        "metadata": network.onnx.meta.to_props(),
    }


def save_engine(output: Path, data: bytes, manifest: dict) -> None:
    """The .plan, then its manifest, each written atomically: the manifest lands last, as the commit record.

    The manifest is serialized and written to its temporary before the engine is renamed into place, so a
    manifest that cannot be serialized or written (a full disk) leaves both files (and any earlier pair)
    untouched. An interruption between the two renames leaves the new engine beside no manifest or the earlier
    one, which the runner refuses in one line ("has no manifest" / "does not match its manifest", by sha256)."""
    with atomic_path(manifest_path(output)) as manifest_tmp:
        manifest_tmp.write_bytes(json_bytes(manifest))
        atomic_write_bytes(output, data)  # the engine lands first; leaving the block renames the manifest


def build_engine(onnx_path: str | Path, output: str | Path, opts: TrtBuildOptions | None = None,
                 echo=print) -> BuildResult:
    """ONNX -> engine + manifest: check_inputs -> network_onnx -> decide_precision -> parse_network ->
    create_config -> engine_bytes -> save_timing_cache -> engine_manifest -> save_engine."""
    job = check_inputs(onnx_path, output, opts or TrtBuildOptions(), echo)
    onnx_model = network_onnx(job, echo)
    try:
        plan = decide_precision(job.lib, job.opts.precision, onnx_model.precision)
        network = parse_network(job.lib, onnx_model, plan.strongly_typed)
        config = create_config(job, network, plan)
        profile = job.profile
        echo(f"building {job.opts.precision} engine with {job.lib.name} {job.lib.version} ({plan.path}), batch "
             f"{profile['min']}..{profile['max']} (opt {profile['opt']})...")
        built = engine_bytes(network, config)
        save_timing_cache(config)
        manifest = engine_manifest(job, built)
        save_engine(job.output, built.data, manifest)
        echo(f"built {job.output} ({len(built.data) / 1e6:.1f} MB) in {built.seconds:.1f} s; manifest "
             f"{manifest_path(job.output).name}")
    except BaseException:  # a failed or interrupted build leaves no derived ONNX next to the engine
        if onnx_model.derived:
            onnx_model.path.unlink(missing_ok=True)
        raise
    return BuildResult(job.output, manifest, built.seconds, [onnx_model.path] if onnx_model.derived else [])


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


__all__ = ["TrtBuildOptions", "BuildResult", "build_engine", "PRECISIONS",
           # the steps build_engine chains, and the values they pass
           "BuildInputs", "NetworkOnnx", "PrecisionPlan", "ParsedNetwork", "BuildConfig", "BuiltEngine",
           "PRECISION_PLANS", "decide_precision", "check_inputs", "network_onnx", "parse_network", "create_config",
           "engine_bytes", "save_timing_cache", "engine_manifest", "save_engine"]
