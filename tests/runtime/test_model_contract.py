"""One model contract, checked where models are opened (issue 20, item 12): one image input, one [N, C] output.

The graphs are built with onnx.helper (no torch): a good one, a two-input one and one with an [N, 10, 1, 1]
output, all carrying alexnet-deploy metadata, so each command meets them as it would meet a real export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from helpers import make_model  # noqa: E402


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    return {k: make_model(tmp_path / f"{k}.onnx", k) for k in ("good", "two-inputs", "nc11")}


def test_the_good_graph_runs(models):
    from alexnet_deploy.runtime.runners.factory import open_runner

    with open_runner(models["good"]) as r:
        assert r.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("kind, words", [("two-inputs", "takes 2 inputs ('input', 'bias')"),
                                         ("nc11", "outputs shape (N, 10, 1, 1), not (N, 10)")])
def test_open_runner_refuses_in_one_line(models, kind, words):
    from alexnet_deploy.errors import ModelLoadError
    from alexnet_deploy.runtime.runners.factory import open_runner

    with pytest.raises(ModelLoadError) as info:
        open_runner(models[kind])
    msg = str(info.value)
    assert words in msg and "\n" not in msg and "alexnet-deploy can run" in msg, msg


def test_runtime_only_install_checks_at_activation(models, monkeypatch):
    """Without the onnx package (a Jetson image with onnxruntime only) the runner checks the session's I/O."""
    from alexnet_deploy.errors import ModelLoadError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners import factory
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    monkeypatch.setattr(factory, "onnx_io", lambda path: None)
    runner = factory.open_runner(models["two-inputs"])  # no static check possible
    with pytest.raises(ModelLoadError, match="takes 2 inputs"):
        runner.activate()
    assert not runner.is_active and runner.session is None
    with pytest.raises(ModelLoadError, match="takes 2 inputs"):  # a direct OrtRunner (calibration, export checks)
        OrtRunner(models["two-inputs"], read_onnx_metadata(models["two-inputs"])).activate()


@pytest.mark.parametrize("kind", ["two-inputs", "nc11"])
def test_every_command_refuses_before_work(models, kind, cli, tmp_path, photos):
    from alexnet_deploy.cli import bench_main, predict_main, serve_main

    for command, args in ((predict_main, [models[kind], photos["astronaut"]]),
                          (bench_main, [models[kind], "--iterations", "1"]),
                          (serve_main, [models[kind], "--port", "0"])):
        code, out, err = cli(command, *args)
        assert code == 2 and err.count("\n") == 1 and "alexnet-deploy can run" in err, (command, out, err)
        assert "serving" not in out


@pytest.mark.parametrize("kind", ["two-inputs", "nc11"])
def test_triton_export_refuses_a_model_the_config_would_misdescribe(models, kind, cli, tmp_path):
    from alexnet_deploy.cli import export_main

    code, out, err = cli(export_main, "triton", models[kind], "--repo", tmp_path / "repo", "--kind", "cpu")
    assert code == 2 and "alexnet-deploy can run" in err and err.count("\n") == 1, err
    assert not (tmp_path / "repo" / "alexnet" / "config.pbtxt").exists()


def test_triton_export_copies_external_data(tmp_path, cli):
    from alexnet_deploy.cli import export_main
    from alexnet_deploy.runtime.runners.factory import open_runner

    model = make_model(tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    code, out, err = cli(export_main, "triton", model, "--repo", tmp_path / "repo", "--kind", "cpu")
    assert code == 0, err
    version = tmp_path / "repo" / "alexnet" / "1"
    assert (version / "ext.onnx.data").read_bytes() == (tmp_path / "ext.onnx.data").read_bytes()
    x = np.ones((1, 3, 32, 32), np.float32)
    with open_runner(model) as a, open_runner(version / "model.onnx") as b:  # the copy runs by itself
        np.testing.assert_array_equal(a.infer(x), b.infer(x))


@pytest.mark.parametrize("kind", ["two-inputs", "nc11"])
def test_tensorrt_build_refuses_before_building(models, kind, tmp_path):
    from alexnet_deploy.errors import ModelLoadError
    from alexnet_deploy.exporter.tensorrt import build_engine

    with pytest.raises(ModelLoadError, match="alexnet-deploy can run"):
        build_engine(models[kind], tmp_path / "m.plan")  # before the TensorRT library is even looked for
    assert not list(tmp_path.glob("m.plan*"))
