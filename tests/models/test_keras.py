"""Keras users come in (issue 22): real Keras 3 files (torch backend, no TensorFlow) built here, read back with
h5py only, exported, and compared with Keras' own ``model.predict``."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="keras 3 is in the [keras] test extra: pip install 'alexnet-deploy[keras]'")
h5py = pytest.importorskip("h5py", reason="h5py is in the [keras] extra")
pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402
from keras import layers  # noqa: E402

from alexnet_deploy.cli.export import export_group  # noqa: E402
from alexnet_deploy.cli.parity import parity_cmd  # noqa: E402

pytestmark = pytest.mark.slow  # real Keras 3 models built and run here

if keras.backend.backend() != "torch":  # pragma: no cover - KERAS_BACKEND was set elsewhere
    pytest.skip("these tests run Keras on its torch backend", allow_module_level=True)

MEAN, STD = "0.5,0.45,0.4", "0.25,0.25,0.3"
TOL = 1e-5  # max abs probability error against keras_model.predict (issue 22)


def _bn_twin(conv4_kernel: int = 1):
    """The issue's Keras AlexNet (the bn variant's twin), weights seeded, BatchNorm statistics that make the
    epsilon and the Flatten order matter, outputs not saturated."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((128, 128, 3)),
        layers.Conv2D(96, 11, strides=4, activation="relu", padding="valid"), layers.BatchNormalization(),
        layers.MaxPool2D(3, 2),
        layers.Conv2D(256, 5, padding="same", activation="relu"), layers.BatchNormalization(), layers.MaxPool2D(3, 2),
        layers.Conv2D(384, 3, padding="same", activation="relu"), layers.BatchNormalization(),
        layers.Conv2D(384, conv4_kernel, padding="same", activation="relu"), layers.BatchNormalization(),
        layers.Conv2D(256, 1, padding="same", activation="relu"), layers.BatchNormalization(), layers.MaxPool2D(3, 2),
        layers.Flatten(), layers.Dense(4096, activation="relu"), layers.Dropout(0.5),
        layers.Dense(4096, activation="relu"), layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ])
    _realistic(m, small_variance_layer=2)
    return m


def _realistic(m, small_variance_layer: int):
    rng = np.random.default_rng(0)
    bns = [lay for lay in m.layers if isinstance(lay, layers.BatchNormalization)]
    for i, bn in enumerate(bns):
        c = bn.get_weights()[0].shape[0]
        var = rng.uniform(1e-3, 1e-2, c) if i == small_variance_layer else rng.uniform(0.5, 2.0, c)
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), var])
    last = m.layers[-1]
    x = rng.integers(0, 256, (4, *m.input_shape[1:])).astype("float32") / 255.0
    for _ in range(8):  # shrink the head until the probabilities are far from one-hot
        if m.predict(x, verbose=0).max(axis=1).mean() < 0.8:
            break
        w, b = last.get_weights()
        last.set_weights([w * 0.2, b])


@pytest.fixture(scope="module")
def bn_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras_bn")
    m = _bn_twin()
    m.save(d / "alexnet_bn.keras")
    m.save(d / "alexnet_bn.h5")
    return m, d


def _keras_in(pixels, mean=MEAN, std=STD):
    mean = np.array([float(v) for v in mean.split(",")], np.float32)
    std = np.array([float(v) for v in std.split(",")], np.float32)
    return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _nothing_written(folder, names=()):
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name in names]
    assert not leftovers, leftovers


def test_keras_and_h5_match_keras_predict(bn_files, tmp_path):
    """The issue's model: .keras exported (softmax carried, BN epsilon folded, Flatten order permuted) ==
    model.predict; .h5 (the legacy layout) read to the same model. The Keras-reference gate and parity against
    it run on the small twin (test_keras_reference_gates_the_export): a 22M-parameter Keras predict is slow."""
    import onnxruntime as ort

    from alexnet_deploy.models.weights import load_model

    km, d = bn_files
    out = tmp_path / "bn.onnx"
    r = _invoke(export_group, ["onnx", "--weights", d / "alexnet_bn.keras", "--mean", MEAN, "--std", STD,
                               "--dataset", "none", "-o", out])
    assert r.exit_code == 0, r.output
    assert "matched variant 'bn'" in r.output and "softmax output" in r.output
    assert "no Keras outputs next to" in r.output  # says that only the port was checked
    meta = {p.key: p.value for p in __import__("onnx").load(str(out), load_external_data=False).metadata_props}
    assert json.loads(meta["alexnet_deploy.output_kind"]) == "probabilities"
    assert json.loads(meta["alexnet_deploy.extra"])["keras"]["format"] == "keras"
    assert json.loads(meta["alexnet_deploy.preprocessing"])["mean"] == [0.5, 0.45, 0.4]

    pixels = np.random.default_rng(1).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    x = _keras_in(pixels)
    want = km.predict(x, verbose=0)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    assert want.max(axis=1).mean() < 0.9  # not saturated: the comparison means something
    assert np.abs(got - want).max() <= TOL

    import torch

    h5 = load_model(None, str(d / "alexnet_bn.h5"))
    assert h5.variant == "bn" and h5.softmax and h5.info["keras"]["format"] == "h5"
    with torch.no_grad():
        got_h5 = h5.model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert np.abs(got_h5 - want).max() <= TOL



def _small_keras(path, *, rescale: bool, channels_first: bool = False, use_bias: bool = True, dense=10):
    """The cifar10 variant's twin (ZeroPadding2D + valid conv = PyTorch's padded conv), 32x32."""
    fmt = "channels_first" if channels_first else "channels_last"
    kw = {"data_format": fmt}
    keras.utils.set_random_seed(1)
    stem = [layers.Rescaling(1 / 127.5, offset=-1.0), layers.Normalization(axis=1 if channels_first else -1,
                                                                             mean=[0.1, -0.1, 0.0],
                                                                             variance=[0.8, 1.2, 1.0])] if rescale else []
    m = keras.Sequential([
        keras.Input((3, 32, 32) if channels_first else (32, 32, 3)), *stem,
        layers.ZeroPadding2D(5, **kw), layers.Conv2D(64, 11, strides=4, activation="relu", use_bias=use_bias, **kw),
        layers.MaxPool2D(2, 2, **kw),
        layers.Conv2D(192, 5, padding="same", activation="relu", **kw), layers.MaxPool2D(2, 2, **kw),
        layers.Conv2D(384, 3, padding="same", activation="relu", **kw),
        layers.Conv2D(256, 3, padding="same", activation="relu", use_bias=use_bias, **kw),
        layers.Conv2D(256, 3, padding="same", activation="relu", **kw), layers.MaxPool2D(2, 2, **kw),
        layers.Flatten(), layers.Dense(dense),
    ])
    m.save(path)
    return m


@pytest.mark.parametrize("channels_first,use_bias", [(False, True), (True, False)])
def test_small_twin_rescaling_channels_first_no_bias(tmp_path, channels_first, use_bias):
    """Rescaling + Normalization become the preprocessing; channels_first and use_bias=False map exactly."""
    from alexnet_deploy.parity.keras_reference import keras_inputs
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.preprocess import normalize_pixels

    import torch

    path = tmp_path / "small.keras"
    km = _small_keras(path, rescale=True, channels_first=channels_first, use_bias=use_bias)
    (tmp_path / "small.labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    loaded = load_model(None, str(path))
    assert loaded.variant == "cifar10" and not loaded.softmax
    assert loaded.class_names[3] == "digit 3"
    # (x/127.5 - 1 - m) / sqrt(v) == (x/255 - mean) / std
    np.testing.assert_allclose(loaded.preprocessing.mean, (np.array([0.1, -0.1, 0.0]) + 1) / 2, rtol=1e-6)
    np.testing.assert_allclose(loaded.preprocessing.std, np.sqrt([0.8, 1.2, 1.0]) / 2, rtol=1e-6)
    pixels = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    want = km.predict(keras_inputs(pixels, loaded), verbose=0)
    with torch.no_grad():
        got = loaded.model(torch.from_numpy(normalize_pixels(pixels, loaded.preprocessing))).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    # --mean/--std on a model that normalizes itself is refused in one line
    r = _invoke(export_group, ["onnx", "--weights", path, "--mean", "0", "--std", "1", "-o", tmp_path / "s.onnx"])
    _one_line_error(r, "drop --mean/--std")


def test_bad_keras_inputs_one_line_exit_2_nothing_written(tmp_path):
    out_dir = tmp_path / "out"
    # a .keras whose layers match no variant
    m = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(8, 3, activation="relu"), layers.Flatten(),
                          layers.Dense(10)])
    m.save(tmp_path / "tiny.keras")
    r = _invoke(export_group, ["onnx", "--weights", tmp_path / "tiny.keras", "--mean", "0", "--std", "1",
                               "-o", out_dir / "a.onnx"])
    _one_line_error(r, "tiny.keras matches no variant", "closest is")
    # an .h5 with the model config but no weights
    cfg = json.dumps(json.loads(zipfile.ZipFile(tmp_path / "tiny.keras").read("config.json")))
    with h5py.File(tmp_path / "noweights.h5", "w") as f:
        f.attrs["model_config"] = cfg
        f.attrs["keras_version"] = "3.15.1"
    r = _invoke(export_group, ["onnx", "--weights", tmp_path / "noweights.h5", "-o", out_dir / "b.onnx"])
    _one_line_error(r, "noweights.h5", "no weights")
    # HDF5, but not Keras
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["images"] = np.zeros((2, 3), np.float32)
    r = _invoke(export_group, ["onnx", "--weights", tmp_path / "data.h5", "-o", out_dir / "c.onnx"])
    _one_line_error(r, "data.h5", "not a Keras model")
    # not HDF5 at all, named .h5
    (tmp_path / "text.h5").write_text("hello")
    r = _invoke(export_group, ["onnx", "--weights", tmp_path / "text.h5", "-o", out_dir / "d.onnx"])
    _one_line_error(r, "text.h5")
    assert not out_dir.exists()
    _nothing_written(tmp_path)


def test_our_export_float_nhwc_input(tmp_path):
    """alexnet-export onnx --input-format float-nhwc on a PyTorch model: one Transpose in front, parity passes."""
    out = tmp_path / "c.onnx"
    r = _invoke(export_group, ["onnx", "--variant", "cifar10", "--input-format", "float-nhwc", "--dataset", "none",
                               "--mean", "0.5", "--std", "0.25", "--interpolation", "bicubic", "-o", out])
    assert r.exit_code == 0, r.output
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    meta = read_onnx_metadata(out)
    assert meta.input_format == "float-nhwc" and meta.input_dims == (32, 32, 3)
    assert meta.preprocessing.mean == (0.5, 0.5, 0.5) and meta.preprocessing.interpolation == "bicubic"
    assert meta.extra["preprocessing_from"] == "--mean/--std --interpolation"
    r = _invoke(export_group, ["onnx", "--variant", "cifar10", "--input-size", "64", "-o", tmp_path / "d.onnx"])
    _one_line_error(r, "32x32")


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """The cifar10 twin without preprocessing layers: .keras, .weights.h5 and Keras' own ONNX."""
    d = tmp_path_factory.mktemp("keras_small")
    km = _small_keras(d / "small.keras", rescale=False)
    km.save_weights(d / "small.weights.h5")
    (d / "small.labels.txt").write_text("".join(f"{i}\n" for i in range(10)))  # the digits' classes
    return km, d


def test_changed_layer_is_one_line_naming_it(small_files, tmp_path):
    """A .keras whose 4th convolution is 1x1 instead of 3x3: one line naming that layer; nothing written."""
    _, d = small_files
    changed = tmp_path / "changed.keras"
    with zipfile.ZipFile(d / "small.keras") as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                cfg = json.loads(data)
                conv = [lay for lay in cfg["config"]["layers"] if lay["class_name"] == "Conv2D"][3]
                conv["config"]["kernel_size"] = [1, 1]
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    out_dir = tmp_path / "out"
    r = _invoke(export_group, ["onnx", "--weights", changed, "--mean", MEAN, "--std", STD, "-o", out_dir / "x.onnx"])
    line = _one_line_error(r, "'conv2d_", "Conv2D(256, 1x1", "Conv2d(256, 3x3, stride 1, padding 1)", "'cifar10'")
    assert "layer 7" in line  # its position in the Keras layer list (0: the InputLayer)
    assert not out_dir.exists()
    r = _invoke(export_group, ["onnx", "--weights", changed, "--variant", "bn", "--mean", MEAN, "--std", STD,
                               "-o", out_dir / "x.onnx"])
    _one_line_error(r, "does not match variant 'bn'", "Conv2D(64, 11x11")


def test_keras_reference_gates_the_export(small_files, tmp_path):
    """Keras' outputs stored next to the model decide: a reference that disagrees stops the export (exit 1,
    nothing written); the true one passes and alexnet-parity checks against it later, without Keras."""
    from alexnet_deploy.fileio import sha256_file

    _, d = small_files
    ref = tmp_path / "ref"
    r = _invoke(export_group, ["keras-reference", d / "small.keras", "--out", ref, "--mean", MEAN, "--std", STD,
                               "--dataset", "digits", "--num-images", 20])
    assert r.exit_code == 0, r.output
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["labels"] == "labels.npy" and manifest["reference"]["output_kind"] == "logits"
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ref.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    y = np.load(bad / "reference_outputs.npy")
    y[0] += 0.05  # one image off by 0.05: far beyond the FP32 gate
    np.save(bad / "reference_outputs.npy", y)
    manifest["files"]["reference_outputs.npy"] = sha256_file(bad / "reference_outputs.npy")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "o" / "small.onnx"
    r = _invoke(export_group, ["onnx", "--weights", d / "small.keras", "--mean", MEAN, "--std", STD,
                               "--dataset", "none", "--keras-reference", bad, "-o", out])
    assert r.exit_code == 1, r.output
    assert "disagrees with Keras' own outputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.parent.exists()
    r = _invoke(export_group, ["onnx", "--weights", d / "small.keras", "--mean", MEAN, "--std", STD,
                               "--dataset", "none", "--keras-reference", ref, "-o", out])
    assert r.exit_code == 0, r.output
    r = _invoke(parity_cmd, [out])
    assert r.exit_code == 0, r.output
    assert "Keras' own outputs" in r.output and "parity: PASS" in r.output
    # another Keras file's outputs are refused by their recorded sha256
    r = _invoke(export_group, ["onnx", "--weights", d / "small.keras", "--mean", "0", "--std", "1",
                               "--keras-reference", tmp_path / "nowhere", "-o", tmp_path / "p.onnx"])
    _one_line_error(r, "Keras reference not found")


def test_weights_h5_needs_variant_and_matches(small_files):
    """model.save_weights(.weights.h5): no layer list, so --variant; the order Keras wrote is checked by shapes."""
    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.models.weights import load_model

    import torch

    km, d = small_files
    with pytest.raises(UserInputError, match="--variant"):
        load_model(None, str(d / "small.weights.h5"))
    loaded = load_model("cifar10", str(d / "small.weights.h5"))
    assert loaded.info["keras"]["format"] == "weights.h5"
    x = _keras_in(np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        got = loaded.model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    want = km.predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_keras_onnx_export_through_float_nhwc(small_files, tmp_path):
    """Keras' own ONNX (NHWC float input, an output named like '112'): adopted with --input-format
    float-nhwc, then predict and parity (against its own outputs) take it."""
    from PIL import Image

    from alexnet_deploy.cli.predict import predict_cmd

    km, _ = small_files
    src = tmp_path / "keras_model.onnx"
    km.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)  # Keras exports only a model that has run
    km.export(str(src), format="onnx", verbose=False)
    out = tmp_path / "adopted.onnx"
    r = _invoke(export_group, ["onnx", "--weights", src, "--variant", "cifar10", "--input-format", "float-nchw",
                               "--mean", MEAN, "--std", STD, "-o", out])
    _one_line_error(r, "--input-format float-nhwc")  # the wrong layout is named, with the right one
    assert not out.exists()
    r = _invoke(export_group, ["onnx", "--weights", src, "--variant", "cifar10", "--input-format", "float-nhwc",
                               "--mean", MEAN, "--std", STD, "-o", out])
    assert r.exit_code == 0, r.output
    assert "logits" in r.output
    import onnx

    # onnxsim folded the exporter's constant chains, no Constant nodes (ONNX Runtime's quantizer needs that)
    nodes = [nd.op_type for nd in onnx.load(str(out)).graph.node]
    assert "Constant" not in nodes and len(nodes) < len(onnx.load(str(src)).graph.node)
    img = tmp_path / "img.png"
    pixels = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(img)
    r = _invoke(predict_cmd, [out, img, "--json"])
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)["results"][0]["top"][0]
    logits = km.predict(_keras_in(pixels[None]), verbose=0)[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert top["label"] == f"class_{int(want.argmax())}"
    assert abs(top["probability"] - float(want.max())) <= TOL
    r = _invoke(parity_cmd, [out, "--dataset", "none", "--random-samples", "4"])
    assert r.exit_code == 0, r.output
    assert "parity: PASS" in r.output


def test_unknown_normalization_is_asked_for(small_files, tmp_path):
    """A Keras model without Rescaling/Normalization does not say what its input was: export and deploy ask in
    one line (nothing written) instead of taking the variant's defaults; NAME.preprocessing.json answers."""
    from alexnet_deploy.cli.deploy import deploy_cmd
    from alexnet_deploy.models.weights import load_model

    _, d = small_files
    model = tmp_path / "m.keras"
    model.write_bytes((d / "small.keras").read_bytes())
    r = _invoke(export_group, ["onnx", "--weights", model, "-o", tmp_path / "o" / "m.onnx"])
    _one_line_error(r, "no Rescaling/Normalization layers", "--mean", "m.preprocessing.json")
    r = _invoke(deploy_cmd, ["--weights", model, "--dataset", "digits", "--out", tmp_path / "dep"])
    _one_line_error(r, "no Rescaling/Normalization layers", "m.preprocessing.json")
    assert not (tmp_path / "o").exists() and not (tmp_path / "dep").exists()
    (tmp_path / "m.preprocessing.json").write_text(json.dumps({"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.3]}))
    loaded = load_model(None, str(model))
    assert loaded.preprocessing.mean == (0.5, 0.45, 0.4) and "preprocessing_unknown" not in loaded.info


def test_functional_chain_matches_and_branches_are_refused(tmp_path):
    """A Functional model that is a chain (here with a ReLU layer and a Softmax layer) maps like a Sequential;
    a branching one is one line naming the layer whose input is not the previous layer."""
    from alexnet_deploy.errors import ModelLoadError
    from alexnet_deploy.models.weights import load_model

    import torch

    keras.utils.set_random_seed(2)
    inp = keras.Input((32, 32, 3))
    x = layers.ZeroPadding2D(5)(inp)
    x = layers.MaxPool2D(2, 2)(layers.Conv2D(64, 11, strides=4, activation="relu")(x))
    x = layers.MaxPool2D(2)(layers.Conv2D(192, 5, padding="same", activation="relu")(x))
    x = layers.Conv2D(384, 3, padding="same", activation="relu")(x)
    x = layers.ReLU()(layers.Conv2D(256, 3, padding="same")(x))
    x = layers.MaxPool2D(2)(layers.Conv2D(256, 3, padding="same", activation="relu")(x))
    m = keras.Model(inp, layers.Softmax()(layers.Dense(10)(layers.Flatten()(x))))
    m.save(tmp_path / "f.keras")
    loaded = load_model(None, str(tmp_path / "f.keras"))
    assert loaded.variant == "cifar10" and loaded.softmax
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        got = loaded.model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert np.abs(got - m.predict(x, verbose=0)).max() <= TOL
    a = keras.Input((32, 32, 3))
    b, c = layers.Conv2D(4, 3, name="left")(a), layers.Conv2D(4, 3, name="right")(a)
    keras.Model(a, layers.Dense(10)(layers.Flatten()(layers.Add()([b, c])))).save(tmp_path / "branch.keras")
    with pytest.raises(ModelLoadError, match="layer 'right' .* not the previous layer 'left'"):
        load_model(None, str(tmp_path / "branch.keras"))
