"""Raw-pixel inputs (normalization in the graph), DeepStream and jetson-inference exports, stretch resizing."""
from __future__ import annotations

import configparser

import numpy as np
import onnx
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def raw_models(session_dir, digits_checkpoint):
    """The digits model exported with each raw-pixel input format (parity-gated like every export)."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model

    loaded = load_model(None, str(digits_checkpoint))
    out = {}
    for fmt, fp16 in (("uint8-nhwc", False), ("float-0-255", False), ("uint8-nhwc", True)):
        r = export_onnx(loaded, session_dir / f"edge-{fmt}{'-fp16' if fp16 else ''}.onnx",
                        ExportOptions(input_format=fmt, fp16=fp16, dataset_samples=64, random_samples=4))
        assert r.report.passed
        out[fmt + ("-fp16" if fp16 else "")] = r.path
    return out


def _images(photos):
    from alexnet_deploy.data.datasets import load_digits

    held = load_digits("heldout")
    return [Image.open(p) for p in photos.values()] + [held.image(i) for i in range(0, 359, 12)]


def _run(path, images, resize="default"):
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.preprocess import model_batch
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    meta = read_onnx_metadata(path)
    with OrtRunner(path, meta) as r:
        return r.infer_batches(model_batch(images, meta, resize)), meta


def test_raw_pixel_models_match_the_normal_model(raw_models, digits_onnx, photos):
    images = _images(photos)
    ref, _ = _run(digits_onnx, images)
    for name, path in raw_models.items():
        out, meta = _run(path, images)
        assert meta.input_format == name.replace("-fp16", "") and meta.input_name == "pixels"
        # FP16: the normalization stays FP32 in front of the FP16 graph's input Cast
        assert np.abs(out - ref).max() <= (2e-2 if name.endswith("fp16") else 1e-5), name
        assert (out.argmax(1) == ref.argmax(1)).all()


def test_normalization_is_explicit_nodes_not_folded_into_conv1(raw_models, digits_onnx):
    base = onnx.load(str(digits_onnx))
    base_w = {i.name: onnx.numpy_helper.to_array(i) for i in base.graph.initializer}
    for fmt, front in (("uint8-nhwc", ["Cast", "Transpose", "Div", "Sub", "Div"]), ("float-0-255", ["Div", "Sub", "Div"])):
        m = onnx.load(str(raw_models[fmt]))
        assert len(m.graph.node) == len(base.graph.node) + len(front)
        assert [n.op_type for n in m.graph.node[: len(front)]] == front
        assert m.graph.node[len(front) - 1].output[0] == base.graph.input[0].name  # feeds the untouched graph
        elem = m.graph.input[0].type.tensor_type.elem_type
        assert elem == (onnx.TensorProto.UINT8 if fmt == "uint8-nhwc" else onnx.TensorProto.FLOAT)
        weights = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        for name, w in base_w.items():  # conv1 and every other weight unchanged
            np.testing.assert_array_equal(weights[name], w)


def test_raw_pixel_model_refuses_normalized_floats(raw_models):
    from alexnet_deploy.errors import InferenceError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    path = raw_models["uint8-nhwc"]
    with OrtRunner(path, read_onnx_metadata(path)) as r:
        with pytest.raises(InferenceError, match="uint8 RGB pixels"):
            r.infer(np.zeros((1, 32, 32, 3), np.float32))


def test_predict_cli_on_raw_pixel_model(raw_models, digits_onnx, photos, cli):
    import json

    from alexnet_deploy.cli import predict_main as predict_cmd

    files = [str(p) for p in photos.values()]
    code, out_ref, _ = cli(predict_cmd, digits_onnx, *files, "--json", "--top-k", "3")
    assert code == 0
    code, out, _ = cli(predict_cmd, raw_models["uint8-nhwc"], *files, "--json", "--top-k", "3")
    assert code == 0
    a, b = json.loads(out_ref)["results"], json.loads(out)["results"]
    assert [r["top"][0]["label"] for r in a] == [r["top"][0]["label"] for r in b]
    assert all(abs(x["probability"] - y["probability"]) < 1e-5 for r, s in zip(a, b) for x, y in zip(r["top"], s["top"]))


def test_stretch_differs_from_crop_on_non_square_images(photos):
    from alexnet_deploy.models.specs import get_variant
    from alexnet_deploy.runtime.metadata import ModelMetadata
    from alexnet_deploy.runtime.preprocess import model_batch

    meta = ModelMetadata("cifar10", [str(i) for i in range(10)], get_variant("cifar10").preprocessing)
    wide = Image.open(photos["chelsea"])  # 451 x 300
    assert wide.size[0] != wide.size[1]
    crop, stretch = model_batch([wide], meta), model_batch([wide], meta, "stretch")
    assert np.abs(crop - stretch).max() > 0.5
    square = wide.crop((0, 0, 300, 300))
    np.testing.assert_array_equal(model_batch([square], meta), model_batch([square], meta, "stretch"))


def test_parity_stretch_reports_both_resizings(raw_models, cli):
    from alexnet_deploy.cli import parity_main as parity_cmd

    code, out, err = cli(parity_cmd, raw_models["float-0-255"], "--dataset", "digits", "--num-images", "40",
                         "--random-samples", "4", "--preprocess", "stretch")
    assert code == 0, err
    assert "digits:heldout[40] stretch" in out
    assert "stretch resize on digits:heldout[40]: accuracy" in out


# ------------------------------------------------------------------------------------------------ DeepStream
def test_deepstream_export(raw_models, digits_onnx, tmp_path, photos):
    from alexnet_deploy.exporter.deepstream import export_deepstream, nvinfer_input
    from alexnet_deploy.runtime.postprocess import to_probabilities

    res = export_deepstream(raw_models["uint8-nhwc"], tmp_path / "ds")
    cfg = configparser.ConfigParser()
    cfg.read(res.files["the nvinfer config"])
    p = cfg["property"]
    onnx_path = tmp_path / "ds" / p["onnx-file"]
    assert p["network-type"] == "1" and p["network-mode"] == "0" and p["model-color-format"] == "0"
    assert p["infer-dims"] == "3;32;32" and p["batch-size"] == "1" and p["process-mode"] == "1"
    assert p["output-blob-names"] == "probabilities" and float(p["classifier-threshold"]) == 0.5
    assert (tmp_path / "ds" / p["labelfile-path"]).read_text() == ";".join(str(i) for i in range(10)) + "\n"
    assert p["model-engine-file"] == f"{p['onnx-file']}_b1_gpu0_fp32.engine" and "int8-calib-file" not in p
    # nvinfer: y = net-scale-factor * (x - offsets) must hand the graph the 0..255 pixels exactly
    scale = np.float32(p["net-scale-factor"])
    offsets = np.array([float(v) for v in p["offsets"].split(";")], np.float32)
    px = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = scale * (px.astype(np.float32) - offsets)
    np.testing.assert_array_equal(y.transpose(0, 3, 1, 2), nvinfer_input(px))
    np.testing.assert_array_equal(y, px.astype(np.float32))
    # the DeepStream graph on what nvinfer feeds == the normal model's probabilities on the same images
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    from alexnet_deploy.runtime.preprocess import model_pixels

    images = _images(photos)
    ref, meta = _run(digits_onnx, images)
    pixels = np.stack([model_pixels(img, meta.preprocessing) for img in images])
    with OrtRunner(onnx_path, read_onnx_metadata(onnx_path)) as r:
        out = r.infer_batches(nvinfer_input(pixels))
    assert np.abs(out - to_probabilities(ref, "logits")).max() < 1e-6
    app = configparser.ConfigParser()
    app.read(res.files["the deepstream-app config"])
    assert app["primary-gie"]["config-file"] == "config_infer_primary_alexnet.txt"
    assert app["source0"]["type"] == "3" and app["source0"]["uri"].startswith("file://")


def test_deepstream_int8_calibration_cache_and_refusals(digits_onnx, tmp_path, cli):
    from alexnet_deploy.cli import export_main as export_group

    code, _, err = cli(export_group, "deepstream", digits_onnx, "--dir", tmp_path / "a", "--precision", "int8")
    assert code == 2 and "--calib-cache" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.table"
    bad.write_text("not a cache\n")
    code, _, err = cli(export_group, "deepstream", digits_onnx, "--dir", tmp_path / "a", "--precision", "int8",
                       "--calib-cache", bad)
    assert code == 2 and "not a TensorRT calibration cache" in err
    cache = tmp_path / "cal.table"
    cache.write_text("TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    code, out, err = cli(export_group, "deepstream", digits_onnx, "--dir", tmp_path / "b", "--precision", "int8",
                         "--calib-cache", cache, "--no-check")
    assert code == 0, err
    cfg = configparser.ConfigParser()
    cfg.read(tmp_path / "b" / "config_infer_primary_alexnet.txt")
    assert cfg["property"]["network-mode"] == "1" and cfg["property"]["int8-calib-file"] == "calib.table"
    assert (tmp_path / "b" / "calib.table").read_bytes() == cache.read_bytes()
    code, _, err = cli(export_group, "deepstream", digits_onnx, "--dir", tmp_path / "v", "--video", "file:///x\n[sink0]")
    assert code == 2 and "one line" in err and not (tmp_path / "v").exists()
    # the folder holding the input model is refused, before anything is written
    code, _, err = cli(export_group, "deepstream", digits_onnx, "--dir", digits_onnx.parent)
    assert code == 2 and "holds the input model" in err
    code, _, err = cli(export_group, "jetson-inference", tmp_path / "missing.onnx", "--dir", tmp_path / "c")
    assert code == 2 and "not found" in err and not (tmp_path / "c").exists()


def test_deepstream_network_mode_follows_the_model_precision(digits_onnx):
    from dataclasses import replace

    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.exporter.deepstream import NETWORK_MODE, DeepStreamOptions, _precision
    from alexnet_deploy.exporter.derived import load_source

    src = load_source(digits_onnx)
    assert NETWORK_MODE == {"fp32": 0, "int8": 1, "fp16": 2}
    assert _precision(src, DeepStreamOptions()) == "fp32"
    assert _precision(src, DeepStreamOptions(precision="fp16")) == "fp16"
    int8 = replace(src, meta=replace(src.meta, precision="int8"))  # a QDQ model: its own scales, no cache
    assert _precision(int8, DeepStreamOptions()) == "int8"
    with pytest.raises(UserInputError, match="int8 model"):
        _precision(int8, DeepStreamOptions(precision="fp16"))
    with pytest.raises(UserInputError, match="FP32 model only"):
        _precision(int8, DeepStreamOptions(calib_cache="x.table"))


def test_label_names_the_stacks_cannot_hold_are_refused(tmp_path, digits_onnx):
    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.exporter.deepstream import labels_file
    from alexnet_deploy.exporter.derived import check_labels

    with pytest.raises(UserInputError, match="';'"):
        labels_file(["cat", "dog;wolf"])
    with pytest.raises(UserInputError, match="label file"):
        check_labels(["a\nb"], "", "jetson-inference")


# ----------------------------------------------------------------------------------------- jetson-inference
def test_imagenet_resize_is_nearest_neighbour_without_crop():
    from alexnet_deploy.exporter.jetson_inference import imagenet_resize

    frame = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3)  # H=4, W=6
    out = imagenet_resize(frame, 3, 2)  # scale x = 2, y = 2: columns 0, 2, 4 of rows 0, 2
    np.testing.assert_array_equal(out, frame[[0, 2]][:, [0, 2, 4]])


def test_jetson_inference_export_matches_emulated_imagenet(digits_onnx, raw_models, tmp_path, photos):
    from alexnet_deploy.exporter.jetson_inference import export_jetson_inference, imagenet_preprocess, imagenet_resize
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.postprocess import to_probabilities
    from alexnet_deploy.runtime.preprocess import normalize_pixels
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    res = export_jetson_inference(raw_models["uint8-nhwc"], tmp_path / "ji")  # a raw-pixel source works too
    path = res.files["the ONNX model"]
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["input_0"] and [o.name for o in m.graph.output] == ["output_0"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    # cifar10 constants differ from ImageNet's: the graph undoes one and applies the other, explicitly
    assert [n.op_type for n in m.graph.node[:4]] == ["Mul", "Add", "Sub", "Div"] and m.graph.node[-1].op_type == "Softmax"
    assert (tmp_path / "ji" / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert any("--input_blob=input_0 --output_blob=output_0" in c and c.startswith("imagenet.py") for c in res.commands)
    # frames of any shape, through an emulation of imageNet's CUDA preprocessing, vs the normal model on the
    # same nearest-resized pixels normalized with the model's own constants
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in photos.values()]
    meta = read_onnx_metadata(digits_onnx)
    with OrtRunner(path, read_onnx_metadata(path)) as ji, OrtRunner(digits_onnx, meta) as normal:
        got = np.concatenate([ji.infer(imagenet_preprocess([f], 32, 32)) for f in frames])
        want = to_probabilities(normal.infer(normalize_pixels(np.stack([imagenet_resize(f, 32, 32) for f in frames]),
                                                              meta.preprocessing)), "logits")
    assert np.abs(got - want).max() < 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()


def test_calibrate_raw_pixel_models_on_their_own_input(raw_models, digits_onnx, tmp_path):
    """alexnet-calibrate builds calibration and held-out batches with model_batch: a float-0-255 model is not
    calibrated on normalized floats (INT8 would sit at chance, ~10 %), and a uint8 graph input stays uint8."""
    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    held = load_digits("heldout")
    images, labels = [held.image(i) for i in range(0, 359, 3)], held.labels[0:359:3]
    for fmt in ("float-0-255", "uint8-nhwc"):
        res = calibrate(raw_models[fmt], tmp_path / f"{fmt}-int8.onnx", num_images=64, eval_images=120,
                        echo=lambda *a: None)
        ev = res.chosen
        assert ev.fp32_accuracy > 90 and abs(ev.int8_accuracy - ev.fp32_accuracy) <= 3, (fmt, ev)
        dtype = [onnx.load(str(m)).graph.input[0].type.tensor_type.elem_type for m in (res.output, raw_models[fmt])]
        assert dtype[0] == dtype[1]
        logits, meta = _run(res.output, images)  # independently of the evaluator: held-out accuracy of the QDQ model
        assert meta.precision == "int8" and np.mean(logits.argmax(1) == labels) > 0.9, fmt
    meta = read_onnx_metadata(raw_models["uint8-nhwc"])
    cal = load_calibration_set("synthetic", meta, 16, allow_synthetic=True)
    assert cal.x.dtype == np.uint8 and cal.x.shape == (16, 32, 32, 3)
    from alexnet_deploy.calibration.trt_calibrator import CalibrationFeeder

    assert CalibrationFeeder(cal.x, 8, tmp_path / "c.cache", {}).x.dtype == np.uint8


def test_bench_raw_pixel_model(raw_models, photos, cli, tmp_path):
    import json

    from alexnet_deploy.cli import bench_main

    out = tmp_path / "out" / "bench.json"
    code, _, err = cli(bench_main, raw_models["uint8-nhwc"], "--iterations", "3", "--warmup-ms", "5",
                       "--batch-sizes", "2", "--no-roofline", "--overhead-check",
                       "--end-to-end-images", next(iter(photos.values())).parent, "--json", out)
    assert code == 0, err
    rows = json.loads(out.read_text())["rows"]
    assert {r["mode"] for r in rows} == {"end-to-end", "images"} and all(r["batch"] == 2 for r in rows)


def test_serve_and_triton_uint8_model(raw_models, digits_onnx, tmp_path):
    """v2 metadata and infer in the model's own datatype (UINT8, [-1, H, W, 3]); classify; Triton config."""
    from fastapi.testclient import TestClient
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.preprocess import model_batch
    from alexnet_deploy.runtime.runners import open_runner
    from alexnet_deploy.server.app import ServeOptions, create_app
    from alexnet_deploy.exporter.triton import export_triton

    held = load_digits("heldout")
    images = [held.image(i) for i in range(0, 359, 45)]
    expected = _run(digits_onnx, images)[0].argmax(1)
    pixels = model_batch(images, read_onnx_metadata(raw_models["uint8-nhwc"]))  # what a client sends: (N, H, W, 3)
    assert pixels.dtype == np.uint8
    with TestClient(create_app(open_runner(raw_models["uint8-nhwc"]), ServeOptions())) as client:
        meta = client.get("/v2/models/alexnet").json()
        assert meta["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
        body = {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8",
                            "data": pixels.ravel().tolist()}]}
        r = client.post("/v2/models/alexnet/infer", json=body)
        assert r.status_code == 200, r.text
        logits = np.asarray(r.json()["outputs"][0]["data"]).reshape(len(images), -1)
        np.testing.assert_array_equal(logits.argmax(1), expected)
        bad = [({**body["inputs"][0], "datatype": "FP32"}, "must be UINT8"),
               ({**body["inputs"][0], "data": [0.5] * pixels.size}, "not all UINT8"),
               ({**body["inputs"][0], "shape": [len(images), 3, 32, 32]}, "[N, 32, 32, 3]")]
        for spec, message in bad:
            r = client.post("/v2/models/alexnet/infer", json={"inputs": [spec]})
            assert r.status_code == 400 and message in r.json()["error"], r.text
        import io

        buf = io.BytesIO()
        images[1].save(buf, format="PNG")
        r = client.post("/models/alexnet/classify", content=buf.getvalue())
        assert r.status_code == 200 and r.json()["top"][0]["label"] == str(expected[1])
    root = export_triton(raw_models["uint8-nhwc"], tmp_path / "repo", kind="cpu")
    cfg = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.input[0].name == "pixels" and list(cfg.input[0].dims) == [32, 32, 3]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_UINT8


def test_edge_exports_refuse_an_ort_placement_int8_model(digits_onnx, tmp_path):
    """alexnet-calibrate's default (ort placement: UINT8 asymmetric activations for ONNX Runtime's CPU kernels)
    cannot be parsed by the TensorRT inside DeepStream and jetson-inference: both exports say so in one line and
    write nothing; a tensorrt-placement model exports."""
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.exporter.deepstream import export_deepstream
    from alexnet_deploy.exporter.jetson_inference import export_jetson_inference

    q, t = tmp_path / "q.onnx", tmp_path / "t.onnx"
    calibrate(digits_onnx, q, num_images=64, eval_images=64, echo=lambda *_: None)
    for export, d in ((export_deepstream, "ds"), (export_jetson_inference, "ji")):
        with pytest.raises(UserInputError, match="calibrated for ONNX Runtime"):
            export(q, tmp_path / d)
        assert not (tmp_path / d).exists()
    calibrate(digits_onnx, t, num_images=64, eval_images=64, placement="tensorrt", echo=lambda *_: None)
    assert export_deepstream(t, tmp_path / "ds").files
