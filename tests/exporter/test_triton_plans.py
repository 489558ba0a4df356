"""alexnet-export triton with TensorRT engines: tensorrt_plan configs from the engine manifests (profile, KIND_GPU),
per-architecture engines in one version through cc_model_filenames, the uint8-NHWC raw-pixel interface, and the
one-line refusals. Every config.pbtxt written is parsed with Triton's own schema (tritonclient's model_config_pb2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.exporter.triton import engine_compute_capability, export_triton, plan_filename, tensorrt_rtx_note
from alexnet_deploy.runtime.trt_library import manifest_path
from helpers import fake_plan, make_model, one_line

quiet = dict(echo=lambda *_: None)


def _parse(root: Path):
    """config.pbtxt through the real ModelConfig message: a wrong field name or value type fails here."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _copy_engine(src: Path, dst: Path, edit=None) -> Path:
    """The engine and its manifest under another name; ``edit(manifest)`` changes the copy's manifest."""
    shutil.copyfile(src, dst)
    m = json.loads(manifest_path(src).read_text())
    if edit:
        edit(m)
    manifest_path(dst).write_text(json.dumps(m))
    return dst


def test_compute_capability_from_the_manifest():
    assert engine_compute_capability({"target_compute_capability": "sm86"}) == "8.6"
    assert engine_compute_capability({"target_compute_capability": "sm120", "gpu": None}) == "12.0"
    # TensorRT records the build GPU's capability; TensorRT-RTX "current" falls back to the recorded GPU
    assert engine_compute_capability({"target_compute_capability": "9.0"}) == "9.0"
    assert engine_compute_capability({"target_compute_capability": "current",
                                      "gpu": {"name": "H100", "compute_capability": "9.0"}}) == "9.0"
    assert engine_compute_capability({"target_compute_capability": None, "gpu": None}) is None
    assert plan_filename("8.6") == "model_sm86.plan" and plan_filename("12.0") == "model_sm120.plan"


# ------------------------------------------------------------------------------------------- real engines
@pytest.fixture(scope="module")
def plans(digits_onnx, digits_checkpoint, tmp_path_factory):
    """Real engines of the 32x32 digits model from the TensorRT-RTX builder (no GPU needed): FP32 for sm86 and
    sm89 (two architectures: the builder itself writes each target_compute_capability into the manifest), FP16
    for sm89, a profile of max 8, and FP32/FP16 of the uint8-NHWC export."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.exporter.tensorrt import TrtBuildOptions, build_engine
    from alexnet_deploy.models.weights import load_model

    d = tmp_path_factory.mktemp("plans")
    u8 = export_onnx(load_model(None, str(digits_checkpoint)), d / "u8.onnx",
                     ExportOptions(input_format="uint8-nhwc", check=False)).path
    specs = {"f86": (digits_onnx, "fp32", "sm86", 32), "f89": (digits_onnx, "fp32", "sm89", 32),
             "h89": (digits_onnx, "fp16", "sm89", 32), "small": (digits_onnx, "fp32", "sm86", 8),
             "u86": (u8, "fp32", "sm86", 32), "u86h": (u8, "fp16", "sm86", 32)}
    out = {"u8.onnx": u8}
    for name, (src, precision, cc, max_batch) in specs.items():
        out[name] = build_engine(src, d / f"{name}.plan", TrtBuildOptions(precision=precision, compute_capability=cc,
                                                                          max_batch=max_batch), **quiet).engine
    return out


@pytest.mark.trt
def test_one_plan_is_a_tensorrt_plan_model(plans, tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    root = export_triton(plans["f86"], tmp_path / "repo", name="alexnet-trt-fp32")
    cfg = _parse(root)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32  # the profile's max
    assert [(g.kind, g.count, list(g.profile)) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1, [])]
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", pb.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [("logits", [10], "labels.txt")]
    assert not cfg.cc_model_filenames and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.parameters["alexnet_deploy.precision"].string_value == "fp32"
    assert cfg.parameters["alexnet_deploy.trt_library"].string_value.startswith("tensorrt")
    assert sorted(p.name for p in (root / "1").iterdir()) == ["model.plan"]
    assert (root / "1" / "model.plan").read_bytes() == plans["f86"].read_bytes()
    assert (root / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    small = _parse(export_triton(plans["small"], tmp_path / "repo", name="small", preferred=[4]))
    assert small.max_batch_size == 8 and list(small.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(UserInputError, match=r"--max-batch 16 exceeds the engine's profile \(max 8\)"):
        export_triton(plans["small"], tmp_path / "repo", name="small", max_batch=16)
    with pytest.raises(UserInputError, match="preferred batch sizes must lie in 1..8"):
        export_triton(plans["small"], tmp_path / "repo", name="small", preferred=[16])
    with pytest.raises(UserInputError, match="GPU only"):
        export_triton(plans["f86"], tmp_path / "repo", name="x", kind="cpu")


@pytest.mark.trt
def test_engines_for_two_architectures_share_one_version(plans, tmp_path, cli):
    """cc_model_filenames: Triton's TensorRT backend looks the GPU's "major.minor" up in it (one version: the
    default version policy would serve only the latest of several)."""
    from alexnet_deploy.cli import export_main

    code, out, err = cli(export_main, "triton", plans["f89"], plans["f86"], "--repo", tmp_path / "repo",
                         "--name", "alexnet-trt-fp32", "--preferred-batch", "8")
    assert code == 0, err
    assert "engines for compute capability 8.6, 8.9" in out and "tensorrt_rtx" in out  # the RTX note
    root = tmp_path / "repo" / "alexnet-trt-fp32"
    cfg = _parse(root)
    assert dict(cfg.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert sorted(p.name for p in root.iterdir()) == ["1", "config.pbtxt", "labels.txt"]  # one version
    files = {p.name: p.read_bytes() for p in (root / "1").iterdir()}
    assert files == {"model_sm86.plan": plans["f86"].read_bytes(), "model_sm89.plan": plans["f89"].read_bytes()}
    # the same export again replaces its own files; a single engine written there later is refused (a stray
    # model_sm*.plan would stay beside model.plan)
    code, _, err = cli(export_main, "triton", plans["f86"], plans["f89"], "--repo", tmp_path / "repo",
                       "--name", "alexnet-trt-fp32")
    assert code == 0, err
    code, _, err = cli(export_main, "triton", plans["f86"], "--repo", tmp_path / "repo", "--name", "alexnet-trt-fp32")
    assert code == 2 and one_line(err) and "model_sm86.plan, model_sm89.plan from another export" in err


@pytest.mark.trt
def test_refusals_are_one_line(plans, digits_onnx, tmp_path, cli):
    from alexnet_deploy.cli import export_main

    d = tmp_path / "e"
    d.mkdir()
    bare = d / "bare.plan"
    shutil.copyfile(plans["f86"], bare)  # no manifest beside it
    broken = d / "broken.plan"
    shutil.copyfile(plans["f86"], broken)
    manifest_path(broken).write_text("{not json")
    incomplete = _copy_engine(plans["f86"], d / "incomplete.plan", lambda m: m.pop("build"))
    other = _copy_engine(plans["f86"], d / "other.plan", lambda m: m.update(engine_sha256="0" * 64))
    twin = _copy_engine(plans["f86"], d / "twin.plan")  # a second engine for compute capability 8.6
    no_cc = _copy_engine(plans["f89"], d / "nocc.plan", lambda m: m.update(target_compute_capability=None, gpu=None))
    # a hardware-compatible engine (manifest field build.hardware_compatibility, as the builder records it)
    ampere = _copy_engine(plans["f89"], d / "ampere.plan",
                          lambda m: m["build"].update(hardware_compatibility="ampere_plus"))
    cases = [
        ((bare,), "has no manifest"),
        ((broken,), "unreadable"),
        ((incomplete,), "not a complete engine manifest"),
        ((other,), "describes another engine"),
        ((plans["u86"], plans["f89"]), "different ONNX models"),
        ((plans["f86"], twin), "both for compute capability 8.6"),
        ((plans["f86"], plans["h89"]), "give each precision its own --name"),
        ((plans["f86"], no_cc), "names no compute capability"),
        ((plans["f86"], ampere), "hardware-compatible"),
        ((plans["f86"], digits_onnx), "one Triton model is one .onnx model"),
        ((digits_onnx, digits_onnx), "one Triton model is one .onnx model"),
        ((plans["f86"], plans["small"]), "batch profile"),
    ]
    for models, message in cases:
        code, _, err = cli(export_main, "triton", *models, "--repo", tmp_path / "repo", "--name", "m")
        assert code == 2 and one_line(err) and message in err, (models, err)
    assert not (tmp_path / "repo").exists(), "a refused export writes nothing"


@pytest.mark.trt
def test_several_profiles_are_listed_in_the_instance_group(plans, tmp_path):
    """The builder writes one profile (build.profile); a manifest listing several (build.profiles, read from the
    manifest exactly like the single one) gets them all in instance_group.profile, and Triton picks per batch."""
    two = _copy_engine(plans["f86"], tmp_path / "two.plan", lambda m: m["build"].update(
        profiles=[{"min": 1, "opt": 4, "max": 8}, {"min": 9, "opt": 16, "max": 32}]))
    cfg = _parse(export_triton(two, tmp_path / "repo", name="two"))
    assert cfg.max_batch_size == 32 and list(cfg.instance_group[0].profile) == ["0", "1"]
    gap = _copy_engine(plans["f86"], tmp_path / "gap.plan", lambda m: m["build"].update(
        profiles=[{"min": 1, "opt": 4, "max": 8}, {"min": 16, "opt": 16, "max": 32}]))
    with pytest.raises(UserInputError, match="leave batches 9..32 uncovered"):
        export_triton(gap, tmp_path / "repo", name="gap")
    late = _copy_engine(plans["f86"], tmp_path / "late.plan",
                        lambda m: m["build"].update(profile={"min": 4, "opt": 8, "max": 32}))
    with pytest.raises(UserInputError, match="--min-batch 1"):
        export_triton(late, tmp_path / "repo", name="late")


@pytest.mark.trt
@pytest.mark.parametrize("which", ["u8.onnx", "u86", "u86h"])
def test_uint8_nhwc_model_takes_raw_pixels_in_triton(plans, tmp_path, which):
    """The raw-pixel interface alexnet-serve gives a uint8-NHWC model (UINT8, [N, H, W, 3]; normalization in the
    graph): one TYPE_UINT8 input of dims [H, W, 3] and no float input, for the ONNX model and its engines."""
    from tritonclient.grpc import model_config_pb2 as pb

    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    kind = "cpu" if which.endswith(".onnx") else None
    cfg = _parse(export_triton(plans[which], tmp_path / "repo", name="raw", kind=kind))
    meta = read_onnx_metadata(plans["u8.onnx"])
    assert meta.input_format == "uint8-nhwc"
    assert [(i.name, i.data_type, list(i.dims), i.format) for i in cfg.input] == \
        [(meta.input_name, pb.TYPE_UINT8, [32, 32, 3], pb.ModelInput.FORMAT_NONE)]
    assert cfg.output[0].data_type == pb.TYPE_FP32
    assert cfg.platform == ("onnxruntime_onnx" if kind else "tensorrt_plan")


def test_tensorrt_rtx_note_is_one_line_or_left_to_the_caller(tmp_path):
    plan = fake_plan(tmp_path / "e" / "model.plan", make_model(tmp_path / "m.onnx"))
    said = []
    export_triton(plan, tmp_path / "repo", name="a", echo=said.append)
    assert said == [tensorrt_rtx_note(["model.plan"], "tensorrt_rtx 1.7.1")] == [
        "note: model.plan was built with tensorrt_rtx 1.7.1; Triton's TensorRT backend loads engines of its own "
        "TensorRT (libnvinfer) version: build with that tensorrt for serving"]
    export_triton(plan, tmp_path / "repo", name="b", echo=said.append, note_tensorrt_rtx=False)  # the caller's
    assert len(said) == 1 and (tmp_path / "repo/b/1/model.plan").is_file()
    assert tensorrt_rtx_note(["x", "y"], "tensorrt_rtx 1.7.1").startswith("note: x, y were built with tensorrt_rtx")
