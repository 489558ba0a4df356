import json

import onnx
import onnxruntime as ort
import pytest
import torch

from alexnet_deploy.errors import ExportError, ParityError, UserInputError
from alexnet_deploy.exporter.bn_fold import fold_batchnorm
from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
from alexnet_deploy.models import build_model, list_variants
from alexnet_deploy.models.weights import load_model
from alexnet_deploy.runtime.metadata import read_onnx_metadata


def test_digits_export_metadata_and_parity(digits_onnx, digits_checkpoint):
    meta = read_onnx_metadata(digits_onnx)
    assert meta.variant == "cifar10" and meta.class_names == [str(i) for i in range(10)]
    assert meta.preprocessing.crop == 32 and meta.precision == "fp32" and meta.batch is None
    # stored relative to the model file (they sit in one folder), with the absolute path and sha256 to confirm
    assert meta.source_weights == "digits.pt" and len(meta.source_sha256) == 64
    assert meta.extra["source_weights_absolute"] == str(digits_checkpoint.resolve())
    assert meta.training_dataset == "digits"
    assert {"torch", "onnx", "onnxruntime"} <= set(meta.versions)
    model = onnx.load(str(digits_onnx))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_report_on_digits(digits_checkpoint, tmp_path):
    result = export_onnx(load_model(None, str(digits_checkpoint)), tmp_path / "m.onnx",
                         ExportOptions(dataset_samples=359))
    digits = {s.name: s for s in result.report.sets}["digits:heldout"]
    assert digits.metrics["top1_agreement"] == 1.0 and digits.metrics["accuracy_delta_pct"] == 0.0
    assert digits.n == 359


def test_fp16_export_keeps_float32_io(digits_fp16_onnx):
    sess = ort.InferenceSession(str(digits_fp16_onnx), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    model = onnx.load(str(digits_fp16_onnx))
    conv_w = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert conv_w, "weights should be float16"
    assert read_onnx_metadata(digits_fp16_onnx).precision == "fp16"


def test_static_batch(tmp_path):
    result = export_onnx(load_model("cifar10"), tmp_path / "s.onnx", ExportOptions(batch=4, dataset_samples=8))
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 32, 32]
    assert read_onnx_metadata(result.path).batch == 4


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in list_variants() if v != "cifar10"])
def test_every_variant_exports_with_parity(variant, tmp_path):
    loaded = load_model(variant)
    result = export_onnx(loaded, tmp_path / f"{variant}.onnx", ExportOptions(random_samples=4, dataset_samples=4))
    assert result.report.passed, result.report.table()
    assert result.simplified
    ops = {n.op_type for n in onnx.load(str(result.path), load_external_data=False).graph.node}
    if variant.startswith("paper"):
        assert "LRN" in ops  # one LRN node, not torch's pad/avg-pool decomposition
    if variant == "bn":
        assert result.folded_batchnorms == ["features.10", "features.13", "features.16"]
    # torchvision's AdaptiveAvgPool2d((6, 6)) on its 6x6 map is the identity: removed (parity above still holds)
    assert "AveragePool" not in ops
    assert result.metadata.extra["identity_nodes_removed"] == (["/avgpool/AveragePool"] if variant == "torchvision" else [])


def test_batchnorm_folding_is_exact_with_real_statistics():
    model = build_model("bn")
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    folded, names = fold_batchnorm(model)
    assert names == ["features.10", "features.13", "features.16"]
    x = torch.randn(3, 3, 128, 128)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 2


def test_negative_bn_scale_is_not_folded_through_maxpool():
    model = build_model("bn")
    model.features[16].weight.data.fill_(-1.0)
    _, names = fold_batchnorm(model)
    assert "features.16" not in names


def test_failed_parity_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError) as err:
        export_onnx(load_model("cifar10"), out, ExportOptions(tolerance_overrides={"max_abs": 0.0, "max_rel": 0.0},
                                                               dataset_samples=8))
    assert "max_" in str(err.value) and "was not written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_failed_export(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous good model")
    with pytest.raises(ParityError):
        export_onnx(load_model("cifar10"), out, ExportOptions(tolerance_overrides={"max_abs": 0.0}, dataset_samples=8))
    assert out.read_bytes() == b"previous good model"


def test_low_opset_is_one_clear_error(tmp_path):
    with pytest.raises(ExportError, match="opset 6"):
        export_onnx(load_model("cifar10"), tmp_path / "m.onnx", ExportOptions(opset=6))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="cannot create output folder"):
        export_onnx(load_model("cifar10"), blocker / "sub" / "m.onnx")
    with pytest.raises(UserInputError, match="end in .onnx"):
        export_onnx(load_model("cifar10"), tmp_path / "m.txt")


def test_parity_json_from_cli(cli, digits_checkpoint, tmp_path):
    from alexnet_deploy.cli import export_main

    code, out, err = cli(export_main, "onnx", "--weights", digits_checkpoint, "-o", tmp_path / "m.onnx",
                         "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "digits:heldout" in out and "wrote" in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True


def test_only_identity_pools_are_dropped():
    from onnx import TensorProto, helper

    from alexnet_deploy.exporter.onnx_export import drop_identity_pools

    nodes = [helper.make_node("AveragePool", ["x"], ["a"], name="id", kernel_shape=[1, 1], strides=[1, 1]),
             helper.make_node("AveragePool", ["a"], ["b"], name="k2", kernel_shape=[2, 2]),
             helper.make_node("MaxPool", ["b"], ["c"], name="padded", kernel_shape=[1, 1], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["y"], name="last", kernel_shape=[1, 1])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:]))
    assert drop_identity_pools(model) == ["id"]  # a graph output keeps its producer
    assert [n.name for n in model.graph.node] == ["k2", "padded", "last"] and model.graph.node[0].input[0] == "x"
