"""The engine names are defined once (alexnet_deploy/runtime/engines.py); every consumer uses that one set."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.runtime import engines

PKG = Path(__file__).resolve().parents[2] / "alexnet_deploy"


def test_groups_partition_the_names():
    groups = (engines.TORCH_ENGINES, engines.ONNX_ENGINES, engines.TENSORRT_ENGINES)
    flat = [e for g in groups for e in g]
    assert tuple(flat) == engines.ENGINES and len(set(flat)) == len(flat)
    assert engines.EXPORTED_ENGINES == (*engines.ONNX_ENGINES, *engines.TENSORRT_ENGINES)
    assert set(engines.MODEL_KINDS) == set(engines.DESCRIPTIONS) == set(engines.ENGINES)
    assert {engines.MODEL_KINDS[e] for e in engines.TORCH_ENGINES} == {"checkpoint"}
    assert {engines.MODEL_KINDS[e] for e in engines.ONNX_ENGINES} == {"onnx"}
    assert {engines.MODEL_KINDS[e] for e in engines.TENSORRT_ENGINES} == {"engine"}
    assert set(engines.ORT_PROVIDERS) == set(engines.ORT_PROVIDER_CLASSES) == set(engines.ONNX_ENGINES)


def test_the_names_as_users_know_them():  # the names are an interface (CLI flags, report.json): unchanged
    assert engines.ENGINES == ("torch", "torch-cuda", "ort", "ort-cuda", "ort-trt", "trt")
    assert engines.ORT_PROVIDERS == {"ort": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}
    assert engines.ORT_PROVIDER_CLASSES == {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                                            "ort-trt": "TensorrtExecutionProvider"}  # ONNX Runtime's names
    assert engines.ENGINE_SUFFIXES == (".plan", ".engine", ".trt")


def test_every_consumer_uses_the_one_definition():
    from alexnet_deploy.benchmarks.run import ENGINES as BENCH
    from alexnet_deploy.deploy import plan
    from alexnet_deploy.parity import verify
    from alexnet_deploy.runtime.runners import factory

    assert tuple(factory.ENGINES) == engines.ENGINES
    assert {e: k for e, (k, _) in factory.ENGINES.items()} == engines.MODEL_KINDS
    assert factory.ENGINE_SUFFIXES is engines.ENGINE_SUFFIXES
    assert set(engines.ENGINES) <= set(BENCH)
    assert plan.ENGINES is engines.ENGINES
    assert plan.TORCH_ENGINES is engines.TORCH_ENGINES and plan.ONNX_ENGINES is engines.ONNX_ENGINES
    assert verify.ENGINES is engines.EXPORTED_ENGINES and verify.ENGINE_SUFFIXES is engines.ENGINE_SUFFIXES
    from alexnet_deploy.runtime.runners import ort

    assert ort.PROVIDERS == {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                             "tensorrt": "TensorrtExecutionProvider"}
    assert {engines.ORT_PROVIDERS[e]: c for e, c in engines.ORT_PROVIDER_CLASSES.items()} == ort.PROVIDERS


@pytest.mark.parametrize("available, want", [
    (["CPUExecutionProvider"], ("torch", "ort")),
    (["TensorrtExecutionProvider", "CPUExecutionProvider"], ("torch", "ort", "ort-trt")),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     ("torch", "ort", "ort-cuda", "ort-trt")),
])
def test_deploy_auto_engines_follow_the_provider_classes(monkeypatch, tmp_path, available, want):
    import types

    from alexnet_deploy.deploy.plan import DeployOptions
    from alexnet_deploy.deploy.run import resolve_engines

    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(get_available_providers=lambda: available))
    monkeypatch.setitem(sys.modules, "torch", None)  # no torch-cuda probe: ImportError
    opts = DeployOptions(weights=tmp_path / "w.pt", out=tmp_path / "out", dataset="digits", targets=("onnx",))
    assert resolve_engines(opts) == want


def test_verify_cli_choice_is_the_exported_engines():
    from alexnet_deploy.cli.verify import verify_cmd

    (opt,) = [p for p in verify_cmd.params if p.name == "engine"]
    assert tuple(opt.type.choices) == engines.EXPORTED_ENGINES


def test_deploy_plan_accepts_each_name_and_routes_it(tmp_path):
    from alexnet_deploy.deploy.plan import REFERENCE, DeployOptions, engines_for

    for e in engines.ENGINES:
        DeployOptions(weights=tmp_path / "w.pt", out=tmp_path / "out", dataset="digits", engines=(e,)).validate()
    with pytest.raises(UserInputError, match=r"unknown --engines bogus; choose from auto or "
                                             r"torch,torch-cuda,ort,ort-cuda,ort-trt,trt"):
        DeployOptions(weights=tmp_path / "w.pt", out=tmp_path / "out", dataset="digits", engines=("bogus",)).validate()
    assert engines_for(REFERENCE, engines.ENGINES) == engines.TORCH_ENGINES
    assert engines_for("onnx-int8", engines.ENGINES) == engines.ONNX_ENGINES
    assert engines_for("trt-fp16", engines.ENGINES) == engines.TENSORRT_ENGINES


def test_factory_accepts_each_name(tmp_path):
    from tests.helpers import make_model

    from alexnet_deploy.runtime.runners.factory import open_runner
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    onnx_path = make_model(tmp_path / "m.onnx")
    for e in engines.ONNX_ENGINES:  # built, not activated: no provider is needed
        runner = open_runner(onnx_path, e)
        assert isinstance(runner, OrtRunner) and runner.engine == e
    wrong = {"checkpoint": onnx_path, "engine": onnx_path, "onnx": tmp_path / "m.plan"}
    wrong["onnx"].write_bytes(b"not an engine")
    for e in engines.ENGINES:  # a known name reaches the kind check (torch/trt without torch or a GPU)
        kind = engines.MODEL_KINDS[e]
        with pytest.raises(UserInputError, match=rf"engine '{e}' runs {kind} files"):
            open_runner(wrong[kind], e)
    with pytest.raises(UserInputError, match="unknown engine 'bogus'; choose one of torch, torch-cuda, ort, "
                                             "ort-cuda, ort-trt, trt"):
        open_runner(onnx_path, "bogus")


# modules not yet moved onto runtime/engines.py (owned by another change): drop a name once it imports the groups
NOT_YET: set[str] = set()  # files still spelling a group out (none)


def test_no_second_copy_of_the_tuples():
    """The group tuples are written out in runtime/engines.py only."""
    literals = ('("ort", "ort-cuda", "ort-trt")', '("torch", "torch-cuda")', '(".plan", ".engine", ".trt")',
                '["ort", "ort-cuda", "ort-trt", "trt"]',
                # the GPU providers' classes belong to an engine (ORT_PROVIDER_CLASSES); "CPUExecutionProvider" is
                # also ONNX Runtime's plain CPU session outside any engine, so it stays allowed
                '"CUDAExecutionProvider"', '"TensorrtExecutionProvider"')
    found = [f"{p.relative_to(PKG)}: {lit}" for p in PKG.rglob("*.py") if p.name != "engines.py"
             and str(p.relative_to(PKG)) not in NOT_YET for lit in literals if lit in p.read_text()]
    assert not found


def test_engine_names_import_nothing_heavy():
    code = ("import sys, alexnet_deploy.runtime.engines; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpu_engines_are_engines_and_cover_every_cuda_one():
    from alexnet_deploy.runtime.engines import ENGINES, GPU_ENGINES, ORT_PROVIDERS

    assert set(GPU_ENGINES) <= set(ENGINES)
    assert {e for e, p in ORT_PROVIDERS.items() if p != "cpu"} | {"trt", "torch-cuda"} == set(GPU_ENGINES)
