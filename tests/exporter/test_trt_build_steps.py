"""The steps exporter/tensorrt.py's build_engine chains, one at a time: the precision decision table (TensorRT 10
vs TensorRT 11 / TensorRT-RTX), input checks, parsing, the builder config (flags, profile, calibrator, DLA,
timing cache), the build, the manifest and the atomic save. TensorRT 10 cannot be installed here, so its path
runs against a small fake of the documented Python API; one real build goes through the steps with
tensorrt_rtx."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import onnx
import pytest

from alexnet_deploy.errors import EngineBuildError, ModelLoadError, UserInputError
from alexnet_deploy.exporter import tensorrt as T
from alexnet_deploy.fileio import sha256_bytes
from alexnet_deploy.runtime.trt_library import MANIFEST_SCHEMA, TrtLibrary, manifest_path
from tests.helpers import make_model

quiet = dict(echo=lambda *_: None)
TRT10 = TrtLibrary("tensorrt", None, "10.3.0")
TRT11 = TrtLibrary("tensorrt", None, "11.0.0")
RTX = TrtLibrary("tensorrt_rtx", None, "1.7.1")


# ------------------------------------------------------------------------------------ the decision table
@pytest.mark.parametrize("lib", [TRT11, RTX], ids=["tensorrt11", "tensorrt_rtx"])
@pytest.mark.parametrize("precision, onnx_precision, path", [
    ("fp32", "fp32", "fp32"),
    ("fp16", "fp16", "strongly-typed-fp16-onnx"),  # an FP16 ONNX (made from FP32 by network_onnx)
    ("int8", "int8", "strongly-typed-qdq-int8"),  # a QDQ ONNX
])
def test_strongly_typed_precision_comes_from_the_onnx(lib, precision, onnx_precision, path):
    plan = T.decide_precision(lib, precision, onnx_precision)
    assert plan == T.PrecisionPlan(path, strongly_typed=True, flags=(), calibrator=False)


@pytest.mark.parametrize("lib", [TRT11, RTX], ids=["tensorrt11", "tensorrt_rtx"])
@pytest.mark.parametrize("precision, onnx_precision", [("fp16", "fp32"), ("int8", "fp32"), ("fp32", "fp16"),
                                                        ("int8", "fp16")])
def test_strongly_typed_refuses_an_onnx_of_another_precision(lib, precision, onnx_precision):
    with pytest.raises(UserInputError, match=rf"^{lib.name} is strongly typed: a {precision} engine needs a "
                                             rf"{precision} ONNX$"):
        T.decide_precision(lib, precision, onnx_precision)


@pytest.mark.parametrize("precision, onnx_precision, want", [
    ("fp32", "fp32", T.PrecisionPlan("fp32")),
    ("fp32", "fp16", T.PrecisionPlan("fp32")),
    ("fp16", "fp32", T.PrecisionPlan("builder-flag-fp16", flags=("FP16",))),
    ("fp16", "fp16", T.PrecisionPlan("builder-flag-fp16", flags=("FP16",))),
    ("int8", "int8", T.PrecisionPlan("qdq-explicit-int8", flags=("FP16", "INT8"))),  # QDQ: explicit INT8
    ("int8", "fp32", T.PrecisionPlan("implicit-int8-calibrator", flags=("FP16", "INT8"), calibrator=True)),
    ("int8", "fp16", T.PrecisionPlan("implicit-int8-calibrator", flags=("FP16", "INT8"), calibrator=True)),
])
def test_tensorrt10_builder_flags_and_calibrator(precision, onnx_precision, want):
    assert T.decide_precision(TRT10, precision, onnx_precision) == want
    assert T.decide_precision(TrtLibrary("tensorrt", None, "8.6.1"), precision, onnx_precision) == want


def test_every_plan_path_is_a_manifest_precision_path():
    paths = {p.path for p in T.PRECISION_PLANS.values()}
    assert paths == {"fp32", "strongly-typed-fp16-onnx", "strongly-typed-qdq-int8", "builder-flag-fp16",
                     "qdq-explicit-int8", "implicit-int8-calibrator"}
    assert all(p.strongly_typed == typed for (typed, _, _), p in T.PRECISION_PLANS.items())
    assert [k for k, p in T.PRECISION_PLANS.items() if p.calibrator] == [(False, "int8", False)]


# ----------------------------------------------------------------------------- a fake TensorRT 10 module
def fake_tensorrt(version: str = "10.3.0", parse_errors=(), build_fails: str | None = None, dla_cores: int = 0):
    """The parts of the TensorRT Python API the build uses, recording what was set."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1, EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK",
                                            VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE=0, AMPERE_PLUS=1, SAME_COMPUTE_CAPABILITY=2)

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
        pass

    trt.IInt8EntropyCalibrator2, trt.IInt8MinMaxCalibrator = IInt8EntropyCalibrator2, IInt8MinMaxCalibrator

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        get_input = lambda self, i: self.inputs[i]  # noqa: E731
        get_output = lambda self, i: self.outputs[i]  # noqa: E731

    class ParserError:
        def __init__(self, node, op, desc):
            self._n, self._o, self._d = node, op, desc

        node_name, node_operator, desc = (lambda s: s._n), (lambda s: s._o), (lambda s: s._d)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = [ParserError(*e) for e in parse_errors]

        num_errors = property(lambda self: len(self.errors))
        get_error = lambda self, i: self.errors[i]  # noqa: E731

        def parse_from_file(self, path):
            trt.calls.append(("parse", path))
            g = onnx.load(path, load_external_data=False).graph
            weights = {i.name for i in g.initializer}
            self.network.inputs = [Tensor(v.name) for v in g.input if v.name not in weights]
            self.network.outputs = [Tensor(v.name) for v in g.output]
            return not self.errors

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shape = (name, lo, opt, hi)

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"T"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator, self.pool = [], [], None, {}

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_flag(self, f):
            self.flags.append(f)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache

        def get_timing_cache(self):
            return self.timing

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build", tuple(config.flags), config.int8_calibrator))
            if build_fails:
                self.logger.log(Severity.ERROR, build_fails)
                return None
            return b"FAKE-ENGINE" * 100

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def trt10(monkeypatch):
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def tiny(tmp_path):
    return make_model(tmp_path / "m.onnx")


def opts10(**kw):
    return T.TrtBuildOptions(library="tensorrt", **kw)


# ------------------------------------------------------------------------------------------------ the steps
def test_check_inputs(trt10, tiny, tmp_path):
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10(max_batch=4), **quiet)
    assert (job.onnx, job.output, job.lib.name, job.lib.version) == (tiny, tmp_path / "e.plan", "tensorrt", "10.3.0")
    assert job.profile == {"min": 1, "opt": 4, "max": 4} and job.meta.variant == "cifar10"
    with pytest.raises(UserInputError, match=r"^unknown precision 'bf16'; choose fp32, fp16, int8$"):
        T.check_inputs(tiny, tmp_path / "e.plan", opts10(precision="bf16"))
    with pytest.raises(UserInputError, match=r"^--hardware-compatibility must be one of none, ampere\+, same-cc$"):
        T.check_inputs(tiny, tmp_path / "e.plan", opts10(hardware_compatibility="all"))
    with pytest.raises(UserInputError, match=r"^ONNX model not found: "):
        T.check_inputs(tmp_path / "no.onnx", tmp_path / "e.plan", opts10())
    with pytest.raises(UserInputError, match=r"^--calib-cache is not used by this build \(an fp16 engine from a fp32"):
        T.check_inputs(tiny, tmp_path / "e.plan", opts10(precision="fp16", calib_cache=str(tmp_path / "c")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_network_onnx_is_the_source_unless_a_strongly_typed_builder_needs_another(trt10, tiny, tmp_path):
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10(precision="fp16"))
    source = T.network_onnx(job, **quiet)
    assert (source.path, source.precision, source.derived) == (tiny, "fp32", False)  # TensorRT 10: builder flags
    said = []
    typed = T.network_onnx(T.BuildInputs(tiny, job.meta, TrtLibrary("tensorrt", trt10, "11.0.0"), job.profile,
                                         job.opts, job.output), echo=said.append)
    assert (typed.path.name, typed.precision, typed.derived, typed.meta.precision) == ("e.fp16.onnx", "fp16", True,
                                                                                      "fp16")
    assert said == ["made FP16 ONNX e.fp16.onnx for the strongly typed tensorrt builder"]


def test_parse_network_and_its_errors(trt10, tiny, tmp_path):
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10())
    onnx_model = T.network_onnx(job)
    net = T.parse_network(job.lib, onnx_model, strongly_typed=False)
    assert (net.input.name, net.output_name, net.network.flags, net.library) == ("input", "logits", 0, "tensorrt")
    assert T.parse_network(TrtLibrary("tensorrt", trt10, "11.0.0"), onnx_model, True).network.flags == 2
    bad = fake_tensorrt(parse_errors=[("/features/features.4/Fancy", "Fancy", "no importer"), ("", "", "and more")])
    with pytest.raises(EngineBuildError) as err:
        T.parse_network(TrtLibrary("tensorrt", bad, "10.3.0"), onnx_model, False)
    assert str(err.value) == ("tensorrt cannot parse m.onnx: ONNX node '/features/features.4/Fancy' (Fancy), PyTorch "
                              "module features.4: no importer | and more")


def _configured(job):
    onnx_model = T.network_onnx(job)
    plan = T.decide_precision(job.lib, job.opts.precision, onnx_model.precision)
    net = T.parse_network(job.lib, onnx_model, plan.strongly_typed)
    return net, T.create_config(job, net, plan)


def test_create_config_profile_flags_and_timing_cache(trt10, tiny, tmp_path):
    (tmp_path / "t.cache").write_bytes(b"abc")
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10(precision="fp16", min_batch=2, max_batch=16,
                                                            workspace_mb=64, timing_cache=str(tmp_path / "t.cache")))
    net, cfg = _configured(job)
    assert cfg.config.flags == ["FP16"] and cfg.precision.path == "builder-flag-fp16"
    assert cfg.config.pool == {"WORKSPACE": 64 << 20}
    (prof,) = cfg.config.profiles
    assert prof.shape == ("input", (2, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    assert cfg.calibration == {} and cfg.calibrator is None and cfg.target_compute_capability is None
    assert cfg.timing_cache == {"path": str(tmp_path / "t.cache"), "loaded_bytes": 3}
    T.save_timing_cache(cfg)
    assert cfg.timing_cache["saved"] == 4 and (tmp_path / "t.cache").read_bytes() == b"abcT"


def test_create_config_attaches_the_tensorrt10_calibrator(trt10, tiny, tmp_path):
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10(precision="int8", calib_images=32,
                                                            calib_algorithm="minmax"))
    net, cfg = _configured(job)
    assert cfg.config.flags == ["FP16", "INT8"] and cfg.precision.path == "implicit-int8-calibrator"
    assert isinstance(cfg.config.int8_calibrator, trt10.IInt8MinMaxCalibrator)
    assert cfg.calibrator is cfg.config.int8_calibrator and cfg.calibrator.get_batch_size() == 8
    assert cfg.calibration == {"cache": str(tmp_path / "e.calib.cache"), "method": "minmax", "num_images": 32,
                               "data_sha256": cfg.calibration["data_sha256"], "dataset": "digits:train"}
    assert len(cfg.calibration["data_sha256"]) == 64


def test_calibrator_for_lives_in_calibration(trt10, tiny, tmp_path):
    from alexnet_deploy.calibration.trt_calibrator import CALIBRATION_BATCH, TrtCalibration, calibrator_for
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    cal, info = calibrator_for(trt10, tiny, read_onnx_metadata(tiny), TrtCalibration("digits", 16, tmp_path / "c"))
    assert isinstance(cal, trt10.IInt8EntropyCalibrator2) and CALIBRATION_BATCH == 8
    assert info["cache"] == str(tmp_path / "c") and info["method"] == "entropy2" and info["num_images"] == 16
    assert cal.read_calibration_cache() is None  # no cache yet
    cal.write_calibration_cache(b"TRT-1000-EntropyCalibration2\n")
    assert cal.read_calibration_cache().startswith(b"TRT-")  # same provenance: reused
    with pytest.raises(UserInputError, match="unknown TensorRT calibration algorithm"):
        calibrator_for(trt10, tiny, read_onnx_metadata(tiny), TrtCalibration("digits", 16, tmp_path / "c", "p99"))


def test_create_config_device_and_compatibility(monkeypatch, tiny, tmp_path):
    trt = fake_tensorrt(dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    job = T.check_inputs(tiny, tmp_path / "e.plan", opts10(dla_core=1, version_compatible=True,
                                                            hardware_compatibility="ampere+"))
    _, cfg = _configured(job)
    c = cfg.config
    assert (c.default_device_type, c.DLA_core, c.hardware_compatibility_level) == ("DLA", 1, 1)
    assert c.flags == ["GPU_FALLBACK", "VERSION_COMPATIBLE"]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(dla_cores=0))
    with pytest.raises(UserInputError, match=r"^--dla-core: this platform has no DLA cores"):
        _configured(T.check_inputs(tiny, tmp_path / "e.plan", opts10(dla_core=0)))
    with pytest.raises(UserInputError, match=r"^--compute-capability applies to TensorRT-RTX only$"):
        _configured(T.check_inputs(tiny, tmp_path / "e.plan", opts10(compute_capability="sm86")))


def test_engine_bytes_failure_is_one_line(monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(build_fails="out of tactics"))
    net, cfg = _configured(T.check_inputs(tiny, tmp_path / "e.plan", opts10()))
    with pytest.raises(EngineBuildError, match=r"^tensorrt could not build an engine from m.onnx: out of tactics$"):
        T.engine_bytes(net, cfg)


def test_save_engine_is_atomic(tmp_path):
    T.save_engine(tmp_path / "e.plan", b"x" * 10, {"schema": MANIFEST_SCHEMA})
    assert (tmp_path / "e.plan").read_bytes() == b"x" * 10
    assert json.loads(manifest_path(tmp_path / "e.plan").read_text()) == {"schema": MANIFEST_SCHEMA}
    with pytest.raises(TypeError):  # a manifest that cannot be written: neither file changes, no temporaries
        T.save_engine(tmp_path / "e.plan", b"y" * 10, {"bad": object()})
    assert (tmp_path / "e.plan").read_bytes() == b"x" * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.manifest.json"]


def _renames(monkeypatch, interrupt: str | None = None) -> list[str]:
    """Record the names os.replace lands; raise KeyboardInterrupt instead of landing a name ending ``interrupt``."""
    real, landed = os.replace, []

    def replace(src, dst):
        if interrupt and Path(dst).name.endswith(interrupt):
            raise KeyboardInterrupt
        landed.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return landed


def test_save_engine_lands_the_engine_first_and_the_manifest_last(trt10, tiny, tmp_path, monkeypatch):
    old = T.build_engine(tiny, tmp_path / "e.plan", opts10(), **quiet)
    old_manifest = manifest_path(old.engine).read_bytes()
    data = b"NEW-ENGINE" * 90
    manifest = {**old.manifest, "engine_sha256": sha256_bytes(data), "engine_bytes": len(data)}
    landed = _renames(monkeypatch)
    T.save_engine(tmp_path / "f.plan", data, manifest)
    assert landed == ["f.plan", "f.plan.manifest.json"]  # the manifest is the commit record

    # interrupted between the two renames: the new engine beside the earlier manifest, which the runner refuses
    _renames(monkeypatch, interrupt=".manifest.json")
    with pytest.raises(KeyboardInterrupt):
        T.save_engine(old.engine, data, manifest)
    assert old.engine.read_bytes() == data and manifest_path(old.engine).read_bytes() == old_manifest
    # ... or beside none (a first build)
    with pytest.raises(KeyboardInterrupt):
        T.save_engine(tmp_path / "g.plan", data, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.manifest.json", "f.plan",
                                                          "f.plan.manifest.json", "g.plan", "m.onnx"]  # no temporaries
    from alexnet_deploy.runtime.runners import open_runner

    with pytest.raises(ModelLoadError) as err:
        open_runner(old.engine).preflight()
    assert str(err.value).startswith(f"{old.engine} does not match its manifest (truncated or replaced: 900 bytes, "
                                     "manifest says 1100); rebuild: alexnet-export trt ")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match=r"^\S+g.plan has no manifest \(g.plan.manifest.json\); rebuild it "
                                             r"with alexnet-export trt$"):
        open_runner(tmp_path / "g.plan")


@pytest.mark.parametrize("precision, path, flags", [("fp32", "fp32", ()), ("fp16", "builder-flag-fp16", ("FP16",)),
                                                    ("int8", "implicit-int8-calibrator", ("FP16", "INT8"))])
def test_build_engine_with_tensorrt10_chains_the_steps(trt10, tiny, tmp_path, precision, path, flags):
    said = []
    res = T.build_engine(tiny, tmp_path / "e.plan", opts10(precision=precision, calib_images=16, max_batch=8),
                         echo=said.append)
    m = res.manifest
    assert json.loads(manifest_path(res.engine).read_text()) == m and res.extra_files == []
    assert (m["precision"], m["precision_path"], m["library"]) == (
        precision, path, {"name": "tensorrt", "version": "10.3.0", "strongly_typed": False})
    assert m["engine_bytes"] == res.engine.stat().st_size == 1100
    assert m["input"] == {"name": "input", "shape": [-1, 3, 32, 32]} and m["output"] == {"name": "logits"}
    assert m["build"]["profile"] == {"min": 1, "opt": 8, "max": 8}
    assert bool(m["build"]["calibration"]) == (precision == "int8")
    (build,) = [c for c in trt10.calls if c[0] == "build"]
    assert build[1] == flags and (build[2] is not None) == (precision == "int8")
    assert said[0] == (f"building {precision} engine with tensorrt 10.3.0 ({path}), batch 1..8 (opt 8)...")
    assert said[1].startswith(f"built {tmp_path / 'e.plan'} (0.0 MB) in ") and said[1].endswith(
        "; manifest e.plan.manifest.json")
    assert set(m) == {"schema", "engine_sha256", "engine_bytes", "library", "gpu", "target_compute_capability",
                      "precision", "precision_path", "source_onnx", "source_onnx_relative", "source_onnx_sha256",
                      "source_onnx_precision", "built_onnx", "built_onnx_sha256", "source_weights_sha256", "input", "output", "build",
                      "platform", "metadata"}


def test_failed_build_leaves_no_derived_onnx(monkeypatch, tiny, tmp_path):
    trt = fake_tensorrt("11.0.0", build_fails="no")  # strongly typed: fp16 makes an FP16 ONNX first
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineBuildError, match="could not build an engine from e.fp16.onnx: no"):
        T.build_engine(tiny, tmp_path / "e.plan", opts10(precision="fp16"), **quiet)
    assert ("parse", str(tmp_path / "e.fp16.onnx")) in trt.calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ------------------------------------------------------------------------------------- a real build (RTX)
@pytest.mark.trt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="needs tensorrt_rtx "
                    "(pip install tensorrt-rtx)")
def test_real_tensorrt_rtx_build_through_the_steps(tmp_path):
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    src = export_onnx(load_model("cifar10"), tmp_path / "c.onnx", ExportOptions(random_samples=1, dataset_samples=1)).path
    job = T.check_inputs(src, tmp_path / "c.plan", T.TrtBuildOptions(library="tensorrt_rtx", max_batch=4), **quiet)
    onnx_model = T.network_onnx(job, **quiet)
    plan = T.decide_precision(job.lib, "fp32", onnx_model.precision)
    assert plan == T.PrecisionPlan("fp32", strongly_typed=True)
    net = T.parse_network(job.lib, onnx_model, plan.strongly_typed)
    cfg = T.create_config(job, net, plan)
    assert cfg.target_compute_capability == "sm86"  # no GPU here: TensorRT-RTX's default ahead-of-time target
    built = T.engine_bytes(net, cfg)
    manifest = T.engine_manifest(job, built)
    T.save_engine(job.output, built.data, manifest)
    assert job.output.stat().st_size == manifest["engine_bytes"] == len(built.data) > 100_000
    assert manifest["precision_path"] == "fp32" and manifest["library"]["name"] == "tensorrt_rtx"
    assert manifest["build"]["profile"] == {"min": 1, "opt": 4, "max": 4}
    from alexnet_deploy.runtime.runners import open_runner

    runner = open_runner(job.output)  # the runtime reads what the steps wrote
    assert (runner.min_batch, runner.max_batch, runner.metadata.variant) == (1, 4, "cifar10")
