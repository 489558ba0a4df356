import json

import numpy as np
import onnx
import pytest

from alexnet_deploy.calibration.cache import sidecar
from alexnet_deploy.calibration.data import ArrayReader, load_calibration_set
from alexnet_deploy.calibration.qdq import is_quantized
from alexnet_deploy.calibration.run import calibrate
from alexnet_deploy.calibration.trt_calibrator import CalibrationFeeder, make_calibrator
from alexnet_deploy.errors import DatasetError, MetadataError, UserInputError
from alexnet_deploy.parity.api import check_parity
from alexnet_deploy.runtime.metadata import read_onnx_metadata


@pytest.fixture(scope="module")
def int8_result(digits_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "digits-int8.onnx"
    return calibrate(digits_onnx, out, method="minmax", sensitivity=True, echo=lambda *_: None)


def test_qdq_model_accuracy_and_provenance(int8_result, digits_onnx):
    ev = int8_result.chosen
    assert ev.fp32_accuracy >= 95.0 and ev.drop <= 0.5, ev.row()
    model = onnx.load(str(int8_result.output))
    assert is_quantized(model)
    ops = [n.op_type for n in model.graph.node]
    # placement ort: every activation but the logits (weights INT8 + DQ); the 5 ReLUs are folded into UINT8 pairs
    assert ops.count("QuantizeLinear") == 10 and "Relu" not in ops
    # biases stay float except the float-output Gemm's, INT32 behind DequantizeLinear so ONNX Runtime fuses it
    # into QGemm (TensorRT rejects INT32 there: its builds fold it back, test_tensorrt.py)
    int32 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    int32_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert [n.output[0] for n in int32_dq] == [last.input[2]]
    meta = read_onnx_metadata(int8_result.output)
    prov = meta.extra["calibration"]
    assert meta.precision == "int8" and prov["num_images"] == 500 and prov["method"] == "minmax"
    assert prov["parameters"]["placement"] == "ort" and prov["requested_images"] == 500
    assert "features.0->features.3" in prov["equalized_pairs"]
    ev_meta = meta.extra["int8_evaluation"]
    assert 0 < ev_meta["logit_max_abs_error"] < 1.0 and ev_meta["logit_cosine"] > 0.999
    assert len(prov["data_sha256"]) == 64 and prov["dataset"] == "digits:train"
    assert prov["source_onnx_sha256"] == meta.fp32_onnx_sha256
    assert prov["preprocessing"]["crop"] == 32


def test_sensitivity_names_pytorch_modules(int8_result):
    layers = [r["layer"] for r in int8_result.sensitivity]
    assert sorted(layers) == sorted(["features.0", "features.3", "features.6", "features.8", "features.10",
                                     "classifier.0"])


def test_int8_passes_int8_parity(int8_result):
    report = check_parity(int8_result.output, num_images=359)
    assert report.precision == "int8" and report.passed, report.table()


@pytest.mark.slow
def test_max_drop_keeps_layers_float(digits_onnx, tmp_path):
    # a negative budget can never be met: every layer is tried in float, most sensitive first
    res = calibrate(digits_onnx, tmp_path / "q.onnx", num_images=64, eval_images=100, max_drop=-1.0,
                    echo=lambda *_: None)
    assert res.chosen.kept_float and res.chosen.kept_float[0] == res.sensitivity[0]["layer"]
    assert read_onnx_metadata(tmp_path / "q.onnx").extra["calibration"]["kept_float"] == res.chosen.kept_float


@pytest.mark.slow
def test_auto_tries_every_method(digits_onnx, tmp_path, cli):
    from alexnet_deploy.cli import calibrate_main

    code, out, err = cli(calibrate_main, digits_onnx, "-o", tmp_path / "q.onnx", "--method", "auto",
                         "--num-images", "128", "--eval-images", "200", "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert [t["method"] for t in r["tried"]] == ["minmax", "entropy", "percentile"]
    assert "chosen:" in out


def test_synthetic_data_is_refused(digits_onnx, tmp_path):
    with pytest.raises(UserInputError, match="--allow-synthetic"):
        calibrate(digits_onnx, tmp_path / "q.onnx", dataset="synthetic", echo=lambda *_: None)
    res = calibrate(digits_onnx, tmp_path / "q.onnx", dataset="synthetic", allow_synthetic=True, num_images=32,
                    echo=lambda *_: None)
    assert read_onnx_metadata(res.output).extra["calibration"]["dataset"] == "synthetic"


def test_already_quantized_and_bad_inputs(int8_result, digits_onnx, digits_fp16_onnx, tmp_path):
    with pytest.raises(UserInputError, match="already quantized"):
        calibrate(int8_result.output, tmp_path / "q.onnx", echo=lambda *_: None)
    with pytest.raises(UserInputError, match="fp16 model"):
        calibrate(digits_fp16_onnx, tmp_path / "q.onnx", echo=lambda *_: None)
    with pytest.raises(UserInputError, match="unknown calibration method"):
        calibrate(digits_onnx, tmp_path / "q.onnx", method="kl", echo=lambda *_: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        calibrate(digits_onnx, tmp_path / "q.onnx", dataset=str(tmp_path / "empty"), echo=lambda *_: None)
    with pytest.raises(UserInputError, match="overwrite"):
        calibrate(digits_onnx, digits_onnx, echo=lambda *_: None)
    assert not (tmp_path / "q.onnx").exists()


def test_model_without_metadata(tmp_path, digits_onnx):
    model = onnx.load(str(digits_onnx))
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(MetadataError, match="--variant"):
        calibrate(tmp_path / "bare.onnx", tmp_path / "q.onnx", echo=lambda *_: None)
    res = calibrate(tmp_path / "bare.onnx", tmp_path / "q.onnx", variant="cifar10", num_images=32,
                    eval_images=50, echo=lambda *_: None)
    assert res.output.exists()


def test_range_cache_reuse_and_staleness(digits_onnx, tmp_path):
    cache = tmp_path / "ranges.json"
    calibrate(digits_onnx, tmp_path / "a.onnx", num_images=64, eval_images=50, cache=cache, echo=lambda *_: None)
    assert cache.exists() and sidecar(cache).exists()
    lines = []
    calibrate(digits_onnx, tmp_path / "b.onnx", num_images=64, eval_images=50, cache=cache, echo=lines.append)
    assert any("reusing calibration ranges" in line for line in lines)
    with pytest.raises(UserInputError, match="stale: num_images, data_sha256"):
        calibrate(digits_onnx, tmp_path / "c.onnx", num_images=32, eval_images=50, cache=cache,
                  echo=lambda *_: None)
    assert not (tmp_path / "c.onnx").exists()
    calibrate(digits_onnx, tmp_path / "c.onnx", num_images=32, eval_images=50, cache=cache, force_cache=True,
              echo=lambda *_: None)


def test_npy_and_balanced_sampling(tmp_path, digits_onnx):
    meta = read_onnx_metadata(digits_onnx)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "imgs.npy", rng.integers(0, 256, (20, 40, 40, 3), dtype=np.uint8))
    cal = load_calibration_set(str(tmp_path / "imgs.npy"), meta, 16)
    assert cal.x.shape == (16, 3, 32, 32)
    np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
    with pytest.raises(DatasetError, match="expected preprocessed"):
        load_calibration_set(str(tmp_path / "bad.npy"), meta, 4)
    a = load_calibration_set("digits", meta, 100)
    assert np.bincount(a.labels).tolist() == [10] * 10
    assert a.fingerprint == load_calibration_set("digits", meta, 100).fingerprint


class FakeDevice:
    allocated = []

    def __init__(self, nbytes):
        self.nbytes, self.ptr, self.data = nbytes, 0xD000 + len(FakeDevice.allocated), None
        FakeDevice.allocated.append(self)

    def copy_from_host(self, arr):
        assert arr.nbytes == self.nbytes
        self.data = arr.copy()

    def free(self):
        self.ptr = 0


def test_tensorrt_calibration_feeder_and_cache(tmp_path):
    x = np.arange(10 * 3 * 4 * 4, dtype=np.float32).reshape(10, 3, 4, 4)
    prov = {"source_onnx_sha256": "abc", "method": "entropy2", "num_images": 10, "data_sha256": "d"}
    feeder = CalibrationFeeder(x, 4, tmp_path / "calib.cache", prov, device_alloc=FakeDevice)
    assert feeder.read_calibration_cache() is None
    ptrs = [feeder.get_batch(["input"]) for _ in range(3)]
    assert ptrs[0] == ptrs[1] and ptrs[2] is None  # two full batches of 4, the tail of 2 is dropped
    assert np.array_equal(FakeDevice.allocated[-1].data, x[4:8])
    feeder.write_calibration_cache(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    assert feeder.read_calibration_cache().startswith(b"TRT-")
    stale = CalibrationFeeder(x, 4, tmp_path / "calib.cache", {**prov, "data_sha256": "other"}, device_alloc=FakeDevice)
    with pytest.raises(UserInputError, match="stale: data_sha256"):
        stale.read_calibration_cache()


def test_make_calibrator_subclasses_the_documented_base():
    class FakeTRT:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
            pass

    feeder = CalibrationFeeder(np.zeros((2, 3, 4, 4), np.float32), 2, "unused.cache", {}, device_alloc=FakeDevice)
    cal = make_calibrator(FakeTRT, feeder, "minmax")
    assert isinstance(cal, FakeTRT.IInt8MinMaxCalibrator) and cal.get_batch_size() == 2
    with pytest.raises(UserInputError, match="unknown TensorRT calibration algorithm"):
        make_calibrator(FakeTRT, feeder, "percentile")


def test_array_reader_static_batch():
    r = ArrayReader(np.zeros((5, 3, 2, 2), np.float32), "input", static_batch=2)
    assert [r.get_next()["input"].shape[0] for _ in range(2)] == [2, 2] and r.get_next() is None


def test_too_small_dataset_is_refused(tmp_path, digits_onnx):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "few" / c).mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "few" / c / "x.png")
    with pytest.raises(DatasetError, match="only 2 images"):
        calibrate(digits_onnx, tmp_path / "q.onnx", dataset=str(tmp_path / "few"), echo=lambda *_: None)
    assert not (tmp_path / "q.onnx").exists()


# --- ranges (TensorRT's calibrators) and Q/DQ placement ---------------------------------------------------------


@pytest.fixture(scope="module")
def auto_result(digits_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "auto.onnx"
    return calibrate(digits_onnx, out, method="auto", num_images=200, percentile=99.99, placement="tensorrt",
                     echo=lambda *_: None)


def _activation_scales(path) -> dict[str, float]:
    """Input tensor -> scale of every activation QuantizeLinear in a QDQ model."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_three_methods_give_different_ranges_and_auto_picks_by_accuracy(auto_result):
    r = auto_result
    assert set(r.ranges) == {"minmax", "entropy", "percentile"}
    tensors = list(r.ranges["minmax"])
    assert len(tensors) == 6  # the activation input of each Conv/Gemm
    for method in ("entropy", "percentile"):
        clipped = [t for t in tensors if r.ranges[method][t] < r.ranges["minmax"][t] * 0.99]
        assert len(clipped) >= 4, (method, r.ranges)
        assert all(r.ranges[method][t] <= r.ranges["minmax"][t] * (1 + 1e-6) for t in tensors)
    assert r.ranges["entropy"] != r.ranges["percentile"]
    # the written model's scales are the chosen method's ranges over the symmetric INT8 grid
    scales = _activation_scales(r.output)
    chosen = r.ranges[r.chosen.method]
    for t, scale in scales.items():
        assert scale == pytest.approx(chosen[t] / 127.5, rel=1e-3) or scale == pytest.approx(chosen[t] / 127, rel=1e-3)
    # auto: the best held-out accuracy wins (ties: agreement, then output error)
    key = [(e.drop, -e.agreement, e.error) for e in r.tried]
    assert [e.method for e in r.tried] == ["minmax", "entropy", "percentile"]
    assert (r.chosen.drop, -r.chosen.agreement, r.chosen.error) == min(key)
    assert r.chosen.fp32_accuracy is not None and r.chosen.drop <= 0.6


def test_entropy_search_clips_long_tails_and_keeps_short_ones():
    from alexnet_deploy.calibration.ranges import FINE_BINS, entropy_amax, percentile_amax

    rng = np.random.default_rng(0)

    def hist(v):
        amax = float(np.abs(v).max())
        h = np.bincount(np.minimum((np.abs(v) * FINE_BINS / amax).astype(int), FINE_BINS - 1), minlength=FINE_BINS)
        return h, amax

    h, amax = hist(rng.laplace(size=200_000))  # long tail: the KL search clips well inside max |x|
    t = entropy_amax(h, amax)
    assert 0.2 * amax < t < 0.8 * amax
    h, amax = hist(rng.uniform(-1, 1, 200_000))  # no tail: clipping only loses information
    assert entropy_amax(h, amax) > 0.95 * amax
    # the fine histogram separates percentiles that a 2048-bin one would merge
    h, amax = hist(rng.standard_normal(2_000_000))
    p4, p5 = percentile_amax(h, amax, 99.99), percentile_amax(h, amax, 99.999)
    assert p4 < p5 < amax and (p5 - p4) > 2 * amax / 2048


def _optimized_ops(path, tmp_path) -> list[str]:
    """The node types ONNX Runtime's CPU provider runs after its QDQ fusions (saved optimized graph)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_default_ort_placement_keeps_logits_float_and_runs_int8_kernels(int8_result, tmp_path):
    model = onnx.load(str(int8_result.output))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # the logits come straight out of the last Gemm (float), which reads INT8 activations and weights
    last = producer[model.graph.output[0].name]
    assert last.op_type == "Gemm" and not consumers.get(last.output[0])
    assert producer[last.input[0]].op_type == "DequantizeLinear" and producer[last.input[1]].op_type == "DequantizeLinear"
    # every Conv's output is quantized: what lets ONNX Runtime fuse DQ -> Conv -> Q into QLinearConv
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5 and all({c.op_type for c in consumers[n.output[0]]} == {"QuantizeLinear"} for n in convs)
    assert int8_result.qdq_nodes == {"QuantizeLinear": 10, "DequantizeLinear": 17}  # weights, activations, bias
    # activations are UINT8; after a (folded) ReLU the range is [0, amax]: zero point 0, the clamp is the ReLU
    inits = {i.name: i for i in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[q.input[2]].data_type == onnx.TensorProto.UINT8 for q in qs)
    # and the provenance says so (it once claimed "int8 symmetric" activations and a float bias for this model)
    params = int8_result.provenance["parameters"]
    assert params["activations"] == "uint8 asymmetric per-tensor" and "int32" in params["bias"], params
    zero = [q for q in qs if not onnx.numpy_helper.to_array(inits[q.input[2]]).any()]
    assert len(zero) >= 5 and all(q.input[0] != model.graph.input[0].name for q in zero)
    ops = _optimized_ops(int8_result.output, tmp_path)
    assert ops.count("QLinearConv") == 5 and "Conv" not in ops, ops
    # the float-output Gemm runs as QGemm too: its bias is INT32 behind DequantizeLinear (ONNX Runtime keeps a
    # Gemm with a float bias in float and dequantizes its INT8 weights on every call)
    bias = producer[last.input[2]]
    assert bias.op_type == "DequantizeLinear" and \
        next(i for i in model.graph.initializer if i.name == bias.input[0]).data_type == onnx.TensorProto.INT32
    assert ops.count("QGemm") == sum(n.op_type == "Gemm" for n in model.graph.node) and "Gemm" not in ops, ops


def test_output_tail_after_the_last_weighted_layer_stays_float(tmp_path):
    """Gemm -> Softmax: ``ort`` leaves the Gemm output and the Softmax in float, quantizes the Gemm's inputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from alexnet_deploy.calibration.placement import output_tail, plan_qdq
    from alexnet_deploy.calibration.qdq import QuantConfig, quantize

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                           helper.make_node("Gemm", ["r", "w"], ["z"], name="fc", transB=1),
                           helper.make_node("Softmax", ["z"], ["prob"], name="softmax", axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 3])], [w])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    assert output_tail(onnx.load(str(fp32))) == (["softmax"], ["prob", "z"])
    plan = quantize(fp32, tmp_path / "q.onnx", {t: 4.0 for t in ["x", "r", "z", "prob"]}, QuantConfig())
    assert plan.placement.value == "ort" and plan.float_tail == ["softmax"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    producer = {o: n for n in q.graph.node for o in n.output}
    assert q.graph.output[0].name == "prob" and producer["prob"].op_type == "Softmax"
    assert producer[producer["prob"].input[0]].op_type == "Gemm"
    assert producer[producer["z"].input[0]].op_type == "DequantizeLinear"
    assert not {"z_scale", "prob_scale"} & {i.name for i in q.graph.initializer}
    x = rng.uniform(-2, 2, (2, 4)).astype(np.float32)
    ref, = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    out, = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(out - ref).max() < 0.05
    every = plan_qdq(onnx.load(str(fp32)), "all")
    assert not every.float_tensors and "softmax" in every.nodes


@pytest.fixture(scope="module")
def trt_result(digits_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8-trt") / "digits-int8-trt.onnx"
    return calibrate(digits_onnx, out, placement="tensorrt", num_images=64, eval_images=100, echo=lambda *_: None)


def test_tensorrt_placement_has_qdq_only_ahead_of_weighted_layers(trt_result, digits_onnx, tmp_path):
    from alexnet_deploy.calibration.placement import plan_qdq

    model = onnx.load(str(trt_result.output))
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in model.graph.node for o in n.output}
    assert all(producer[o.name].op_type not in ("DequantizeLinear", "QuantizeLinear") for o in model.graph.output)
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            assert {c.op_type for c in consumers[n.output[0]]} <= {"Conv", "Gemm", "MatMul"}, n.name
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(weighted) == 6
    for n in weighted:  # activation and weight both come through a DequantizeLinear
        assert producer[n.input[0]].op_type == "DequantizeLinear" and producer[n.input[1]].op_type == "DequantizeLinear"
    assert trt_result.qdq_nodes == {"QuantizeLinear": 6, "DequantizeLinear": 12}
    assert read_onnx_metadata(trt_result.output).extra["calibration"]["parameters"]["placement"] == "tensorrt"
    plan = plan_qdq(onnx.load(str(digits_onnx)), "tensorrt")
    assert len(plan.activations) == 6 and len(plan.weights) == 6 and plan.placement.value == "tensorrt"
    assert "QLinearConv" not in _optimized_ops(trt_result.output, tmp_path)  # why CPU gets the ort placement
    # "all" (ONNX Runtime's default) quantizes every tensor, the logits included
    res = calibrate(digits_onnx, tmp_path / "all.onnx", placement="all", num_images=64, eval_images=100,
                    echo=lambda *_: None)
    assert res.qdq_nodes["QuantizeLinear"] > 10
    every = onnx.load(str(res.output))
    assert {n.op_type for n in every.graph.node if n.output[0] == every.graph.output[0].name} == {"DequantizeLinear"}
    with pytest.raises(UserInputError, match="unknown Q/DQ placement"):
        calibrate(digits_onnx, tmp_path / "x.onnx", placement="everywhere", echo=lambda *_: None)


def test_older_onnxruntime_path_inserts_the_same_nodes(digits_onnx, tmp_path, monkeypatch):
    from alexnet_deploy.calibration import qdq

    a = calibrate(digits_onnx, tmp_path / "a.onnx", num_images=64, eval_images=50, echo=lambda *_: None)
    monkeypatch.setattr(qdq, "_takes_range_cache", lambda: False)
    b = calibrate(digits_onnx, tmp_path / "b.onnx", num_images=64, eval_images=50, echo=lambda *_: None)
    assert a.qdq_nodes == b.qdq_nodes and _activation_scales(a.output) == _activation_scales(b.output)


def test_weights_on_dead_input_channels_are_zeroed():
    from onnx import TensorProto, helper, numpy_helper

    from alexnet_deploy.calibration.dead_channels import zero_dead_inputs

    rng = np.random.default_rng(0)
    w_conv = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w_gemm = rng.standard_normal((2, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wc"], ["c"], name="/features/features.0/Conv"),
         helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("Gemm", ["f", "wg"], ["y"], name="/classifier/classifier.1/Gemm", transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w_conv, "wc"), numpy_helper.from_array(w_gemm, "wg")])
    model = helper.make_model(graph)
    report = zero_dead_inputs(model, {"x": np.array([1.0, 0.0, 2.0]), "f": np.array([0.0, 1.0, 0.0, 3.0])})
    assert report == {"features.0": 1, "classifier.1": 2}
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert not w["wc"][:, 1].any() and np.array_equal(w["wc"][:, [0, 2]], w_conv[:, [0, 2]])
    assert not w["wg"][:, [0, 2]].any() and np.array_equal(w["wg"][:, [1, 3]], w_gemm[:, [1, 3]])
    assert zero_dead_inputs(model, {"x": np.ones(3)}) == {}


def test_cross_layer_equalization_keeps_the_fp32_function(digits_onnx, tmp_path):
    import onnxruntime as ort

    from alexnet_deploy.calibration.equalize import equalize

    model = onnx.load(str(digits_onnx))
    report = equalize(model)
    assert "features.0->features.3" in report and "features.8->features.10" in report
    onnx.save(model, tmp_path / "eq.onnx")
    meta = read_onnx_metadata(digits_onnx)
    x = load_calibration_set("digits", meta, 32).x
    a = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"]).run(None, {meta.input_name: x})[0]
    b = ort.InferenceSession(str(tmp_path / "eq.onnx"), providers=["CPUExecutionProvider"]).run(None, {meta.input_name: x})[0]
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()


def test_short_held_out_part_is_named(tmp_path, digits_onnx):
    """60 images, no train/val: 50 calibrate, 10 are held out; the error says which part is short."""
    from alexnet_deploy.data.datasets import load_digits

    ds, seen = load_digits("heldout"), {}
    for i in range(len(ds)):
        c = ds.class_names[ds.labels[i]]
        if seen.get(c, 0) < 6:
            seen[c] = seen.get(c, 0) + 1
            (tmp_path / "folder" / c).mkdir(parents=True, exist_ok=True)
            ds.image(i).convert("RGB").save(tmp_path / "folder" / c / f"{i}.png")
    with pytest.raises(DatasetError, match="held-out part of .* has only 10 images"):
        calibrate(digits_onnx, tmp_path / "q.onnx", dataset=str(tmp_path / "folder"), echo=lambda *_: None)
    assert not (tmp_path / "q.onnx").exists()


def test_quantizer_failure_is_one_line(cli, digits_onnx, tmp_path, monkeypatch):
    """onnxruntime.quantization's own errors (ValueError, AssertionError 'scale issue') used to surface as a
    traceback from inside onnxruntime."""
    import onnxruntime.quantization

    from alexnet_deploy.calibration import qdq
    from alexnet_deploy.cli import calibrate_main

    def boom(*_a, **_k):
        raise AssertionError("scale issue")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", boom)
    monkeypatch.setattr(qdq, "_quantize_direct", boom)
    code, out, err = cli(calibrate_main, digits_onnx, "-o", tmp_path / "q.onnx", "--num-images", 16,
                         "--eval-images", 16)
    assert code == 2, (code, err)
    line = err.strip().splitlines()[-1]
    assert "could not quantize" in line and "scale issue" in line and "Traceback" not in err, err
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob(".alexnet*"))
