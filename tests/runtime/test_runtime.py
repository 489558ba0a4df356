import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_deploy.errors import InferenceError, MetadataError, MissingDependencyError, UserInputError
from alexnet_deploy.runtime.runners import open_runner


def test_runtime_path_runs_without_torch(digits_onnx, tmp_path):
    """Jetson images have numpy + onnxruntime/TensorRT but no torch: block it and run the whole path."""
    img = tmp_path / "img.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(img)
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError("torch blocked for this test")
        sys.meta_path.insert(0, Block())
        from alexnet_deploy.runtime.runners import open_runner
        from alexnet_deploy.runtime.preprocess import load_image, preprocess_batch
        from alexnet_deploy.runtime.postprocess import to_probabilities, topk
        import alexnet_deploy.runtime.runners.tensorrt
        import alexnet_deploy.parity.compare
        r = open_runner({str(digits_onnx)!r})
        with r:
            x = preprocess_batch([load_image({str(img)!r})], r.metadata.preprocessing)
            print(topk(to_probabilities(r.infer(x)), 1, r.metadata.class_names)[0][0]["label"])
        assert "torch" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in [str(i) for i in range(10)]


def test_ort_runner_checks_inputs(digits_onnx):
    with open_runner(digits_onnx) as r:
        assert r.provider == "CPUExecutionProvider"
        good = np.zeros((2, 3, 32, 32), np.float32)
        assert r.infer(good).shape == (2, 10)
        assert r.infer({"input": good}).shape == (2, 10)
        with pytest.raises(InferenceError, match="named 'input'"):
            r.infer({"x": good})
        with pytest.raises(InferenceError, match=r"shape \(N, 3, 32, 32\)"):
            r.infer(np.zeros((2, 3, 28, 28), np.float32))
        with pytest.raises(InferenceError, match="rank 4"):
            r.infer(np.zeros((3, 32, 32), np.float32))
        with pytest.raises(InferenceError, match="floating point"):
            r.infer(np.zeros((1, 3, 32, 32), np.int64))
    with pytest.raises(InferenceError, match="not active"):
        r.infer(good)


def test_missing_execution_provider_is_one_line(digits_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime-gpu"):
        open_runner(digits_onnx, "ort-cuda").activate()


def test_factory_errors(digits_onnx, tmp_path):
    with pytest.raises(UserInputError, match="unknown engine"):
        open_runner(digits_onnx, "tensorflow")
    with pytest.raises(UserInputError, match="runs checkpoint files"):
        open_runner(digits_onnx, "torch")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(UserInputError, match="cannot tell"):
        open_runner(tmp_path / "m.xyz")


def test_model_without_metadata_needs_variant(tmp_path):
    import onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), tmp_path / "bare.onnx", dynamo=False,
                      input_names=["input"], output_names=["logits"])
    onnx.checker.check_model(str(tmp_path / "bare.onnx"))
    with pytest.raises(MetadataError, match="--variant"):
        open_runner(tmp_path / "bare.onnx")
    with open_runner(tmp_path / "bare.onnx", variant="cifar10") as r:
        assert r.metadata.preprocessing.crop == 32 and r.infer(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


def test_torch_runner_matches_ort(digits_checkpoint, digits_onnx):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runner(digits_checkpoint) as t, open_runner(digits_onnx) as o:
        assert np.abs(t.infer(x) - o.infer(x)).max() < 1e-4


def test_predict_cli(cli, digits_onnx, digits_checkpoint, tmp_path):
    from alexnet_deploy.cli import predict_main
    from alexnet_deploy.data.datasets import load_digits

    held = load_digits("heldout")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        held.image(i).save(folder / f"{i:02d}_{held.labels[i]}.png")
    code, out, err = cli(predict_main, digits_onnx, folder, "--json", "--top-k", "3")
    assert code == 0, err
    res = json.loads(out)["results"]
    assert len(res) == 40 and len(res[0]["top"]) == 3
    correct = sum(r["top"][0]["label"] == r["image"].rsplit("_", 1)[1][0] for r in res)
    assert correct >= 36
    first = sorted(folder.iterdir())[0]
    code, out, err = cli(predict_main, digits_checkpoint, first)
    assert code == 0 and out.startswith(str(first)), err


def test_predict_cli_bad_input(cli, digits_onnx, tmp_path):
    from alexnet_deploy.cli import predict_main

    (tmp_path / "x.jpg").write_text("not an image")
    code, out, err = cli(predict_main, digits_onnx, tmp_path / "x.jpg")
    assert code == 2 and "not an image" in err and err.count("\n") == 1
    code, _, err = cli(predict_main, tmp_path / "missing.onnx", tmp_path / "x.jpg")
    assert code == 2 and "model not found" in err
    (tmp_path / "corrupt.onnx").write_bytes(b"\x00garbage")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    code, _, err = cli(predict_main, tmp_path / "corrupt.onnx", tmp_path / "ok.png")
    assert code == 2 and "not a readable ONNX model" in err
