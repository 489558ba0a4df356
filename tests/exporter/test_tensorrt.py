"""Engine builds with a real NVIDIA builder (tensorrt-rtx in CI, no GPU needed); execution is gpu-marked."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from alexnet_deploy.errors import EngineBuildError, InferenceError, MetadataError, ModelLoadError, UserInputError
from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
from alexnet_deploy.runtime.runners import open_runner
from alexnet_deploy.runtime.trt_library import manifest_path

pytestmark = pytest.mark.trt
quiet = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def engines(digits_onnx, tmp_path_factory):
    d = tmp_path_factory.mktemp("engines")
    out = {}
    for p in ("fp32", "fp16", "int8"):
        cache = str(d / "c10.calib") if p == "int8" else None  # strongly typed: alexnet-calibrate's range cache
        out[p] = build_engine(digits_onnx, d / f"c10-{p}.plan",
                              TrtBuildOptions(precision=p, calib_images=128, timing_cache=str(d / "timing.cache"),
                                              calib_cache=cache), **quiet)
    return out


def test_calib_cache_is_used_or_refused(engines, digits_onnx, tmp_path):
    """--calib-cache used to be ignored silently by strongly typed builders (tensorrt-rtx)."""
    d = engines["int8"].engine.parent
    assert (d / "c10.calib").is_file() and (d / "c10.calib.provenance.json").is_file()
    ranges = json.loads((d / "c10.calib").read_text())
    assert ranges["amax"], "empty range cache"
    with pytest.raises(UserInputError, match="--calib-cache is not used by this build"):
        build_engine(digits_onnx, tmp_path / "f.plan", TrtBuildOptions(precision="fp16", calib_cache=str(d / "c10.calib")),
                     **quiet)
    assert not (tmp_path / "f.plan").exists()


def test_cifar10_engines_and_manifests(engines, digits_onnx):
    paths = {"fp32": "fp32", "fp16": "strongly-typed-fp16-onnx", "int8": "strongly-typed-qdq-int8"}
    for precision, res in engines.items():
        m = json.loads(manifest_path(res.engine).read_text())
        assert res.engine.stat().st_size == m["engine_bytes"] > 100_000
        assert m["precision"] == precision
        if m["library"]["strongly_typed"]:
            assert m["precision_path"] == paths[precision]
        assert m["build"]["profile"] == {"min": 1, "opt": 8, "max": 32}
        assert m["source_onnx"] == str(digits_onnx.resolve()) and len(m["source_weights_sha256"]) == 64
        assert m["metadata"]["alexnet_deploy.variant"] == '"cifar10"'
    int8 = json.loads(manifest_path(engines["int8"].engine).read_text())
    assert int8["build"]["calibration"]["num_images"] == 128
    if int8["library"]["strongly_typed"]:  # the QDQ ONNX made on the fly has TensorRT's placement
        assert int8["build"]["calibration"]["parameters"]["placement"] == "tensorrt"
        assert int8["build"]["calibration"]["method"] == "entropy"
        qdq = onnx.load(str(engines["int8"].extra_files[0]))
        producer = {o: n.op_type for n in qdq.graph.node for o in n.output}
        assert producer[qdq.graph.output[0].name] == "Gemm"  # logits stay float
        assert [n.op_type for n in qdq.graph.node].count("QuantizeLinear") == 6
    assert [f.name for f in engines["fp16"].extra_files] == ["c10-fp16.fp16.onnx"]


def test_timing_cache_is_written_and_reused(engines):
    first = json.loads(manifest_path(engines["fp32"].engine).read_text())["build"]["timing_cache"]
    later = json.loads(manifest_path(engines["int8"].engine).read_text())["build"]["timing_cache"]
    assert first["loaded_bytes"] == 0 and first["saved"] > 0
    assert later["loaded_bytes"] == first["saved"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_torchvision_engines(precision, tmp_path):
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    onnx_path = export_onnx(load_model("torchvision"), tmp_path / "tv.onnx",
                            ExportOptions(random_samples=2, dataset_samples=2)).path
    res = build_engine(onnx_path, tmp_path / "tv.plan",
                       TrtBuildOptions(precision=precision, calib_images=32, max_batch=8), **quiet)
    m = res.manifest
    assert m["precision"] == precision and m["build"]["profile"]["max"] == 8
    assert m["input"]["shape"][1:] == [3, 224, 224]


def test_static_onnx_gets_a_static_profile(tmp_path):
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    static = export_onnx(load_model("cifar10"), tmp_path / "s.onnx", ExportOptions(batch=4, dataset_samples=4)).path
    res = build_engine(static, tmp_path / "s.plan", **quiet)
    assert res.manifest["build"]["profile"] == {"min": 4, "opt": 4, "max": 4}
    with pytest.raises(UserInputError, match="static batch of 4"):
        build_engine(static, tmp_path / "s2.plan", TrtBuildOptions(max_batch=16), **quiet)


def test_bad_profile(digits_onnx, tmp_path):
    with pytest.raises(UserInputError, match="bad optimization profile"):
        build_engine(digits_onnx, tmp_path / "x.plan", TrtBuildOptions(min_batch=8, max_batch=4), **quiet)
    assert not list(tmp_path.iterdir())


def test_corrupt_and_metadata_less_onnx(tmp_path, digits_onnx):
    (tmp_path / "bad.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(ModelLoadError, match="not a readable ONNX"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "x.plan", **quiet)
    bare = onnx.load(str(digits_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(MetadataError):
        build_engine(tmp_path / "bare.onnx", tmp_path / "x.plan", **quiet)
    assert not (tmp_path / "x.plan").exists()


def test_unsupported_op_names_node_and_module(tmp_path, digits_onnx):
    model = onnx.load(str(digits_onnx))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain, relu.name = "FancyActivation", "com.example", "/features/features.4/FancyActivation"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(EngineBuildError) as err:
        build_engine(tmp_path / "custom.onnx", tmp_path / "x.plan", **quiet)
    assert "features.4" in str(err.value)
    assert not (tmp_path / "x.plan").exists() and not manifest_path(tmp_path / "x.plan").exists()


def test_runner_refuses_truncated_stale_and_gpu_less(engines, tmp_path):
    import shutil

    src = engines["fp32"].engine
    eng = shutil.copy(src, tmp_path / "e.plan")
    shutil.copy(manifest_path(src), manifest_path(eng))
    runner = open_runner(eng)
    assert runner.metadata.variant == "cifar10" and (runner.min_batch, runner.max_batch) == (1, 32)
    with pytest.raises(InferenceError, match="no CUDA GPU"):
        runner.activate()
    m = json.loads(manifest_path(eng).read_text())
    m["library"]["version"] = "0.9.0"
    manifest_path(eng).write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match=r"stale: built with tensorrt_rtx 0.9.0.*alexnet-export trt"):
        open_runner(eng).activate()
    data = (tmp_path / "e.plan").read_bytes()
    (tmp_path / "e.plan").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        open_runner(eng).activate()
    manifest_path(eng).unlink()
    with pytest.raises(ModelLoadError, match="no manifest"):
        open_runner(eng)


def test_other_library_is_named(engines, tmp_path):
    import shutil

    eng = shutil.copy(engines["fp32"].engine, tmp_path / "e.plan")
    m = json.loads(manifest_path(engines["fp32"].engine).read_text())
    m["library"] = {"name": "tensorrt", "version": "10.3.0", "strongly_typed": False}
    manifest_path(eng).write_text(json.dumps(m))
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(ModelLoadError, match="built with tensorrt 10.3.0, which is not installed"):
        open_runner(eng).activate()


def test_export_trt_cli(cli, digits_onnx, tmp_path):
    from alexnet_deploy.cli import export_main

    code, out, err = cli(export_main, "trt", digits_onnx, "-o", tmp_path / "e.plan", "--max-batch", "4")
    assert code == 0, err
    assert "built" in out and manifest_path(tmp_path / "e.plan").exists()
    code, _, err = cli(export_main, "trt", tmp_path / "missing.onnx", "-o", tmp_path / "m.plan")
    assert code == 2 and "not found" in err


@pytest.mark.gpu
def test_engine_execution_matches_onnx(engines, digits_onnx):
    from alexnet_deploy.parity.api import check_parity

    for precision, res in engines.items():
        report = check_parity(res.engine, num_images=359)
        assert report.passed, report.table()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with open_runner(engines["fp32"].engine) as trt_runner, open_runner(digits_onnx) as ort_runner:
        assert np.abs(trt_runner.infer(x) - ort_runner.infer(x)).max() < 1e-3
        with pytest.raises(InferenceError, match="outside"):
            trt_runner.infer(np.zeros((33, 3, 32, 32), np.float32))


def test_rebuild_if_stale_rebuilds_from_recorded_onnx(engines, tmp_path):
    import shutil

    eng = shutil.copy(engines["fp32"].engine, tmp_path / "e.plan")
    m = json.loads(manifest_path(engines["fp32"].engine).read_text())
    current = m["library"]["version"]
    m["library"]["version"] = "0.9.0"
    manifest_path(eng).write_text(json.dumps(m))
    from alexnet_deploy.exporter.rebuild import rebuild_engine

    runner = open_runner(eng, rebuild_if_stale=True, rebuild=rebuild_engine)
    with pytest.raises(InferenceError, match="no CUDA GPU"):  # rebuilt, then stopped by the missing GPU
        runner.activate()
    assert json.loads(manifest_path(eng).read_text())["library"]["version"] == current


def test_ort_placement_model_is_refused_with_one_line(digits_onnx, tmp_path, cli):
    """alexnet-calibrate's default (ort placement: UINT8 asymmetric activations, an INT32 bias on the
    float-output Gemm) is for ONNX Runtime; TensorRT's parser cannot read it, so export trt says so in one line,
    before any work, and writes nothing. The FP32 model or a tensorrt-placement model builds."""
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.cli import export_main

    q = tmp_path / "ort.onnx"
    calibrate(digits_onnx, q, num_images=64, eval_images=64, placement="ort", echo=lambda *_: None)
    with pytest.raises(UserInputError, match="calibrated for ONNX Runtime .*--placement tensorrt"):
        build_engine(q, tmp_path / "ort.plan", TrtBuildOptions(precision="int8"), **quiet)
    code, _, err = cli(export_main, "trt", q, "-o", tmp_path / "cli.plan", "--precision", "int8")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--placement tensorrt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort.onnx"]
    t = tmp_path / "trt.onnx"
    calibrate(digits_onnx, t, num_images=64, eval_images=64, placement="tensorrt", echo=lambda *_: None)
    with pytest.raises(UserInputError, match="DLA"):  # a failed build leaves no derived ONNX behind
        build_engine(digits_onnx, tmp_path / "f.plan", TrtBuildOptions(precision="fp16", dla_core=0), **quiet)
    assert not list(tmp_path.glob("f.*"))
    assert build_engine(t, tmp_path / "trt.plan", TrtBuildOptions(precision="int8"), **quiet).engine.is_file()
