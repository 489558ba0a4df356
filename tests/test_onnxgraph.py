"""alexnet_deploy/onnxgraph.py: the graph helpers exporter/, calibration/ and benchmarks/ share."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs onnx ('alexnet-deploy[build]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from alexnet_deploy.onnxgraph import behind_dequantize, consumers, initializer_bytes, module_of_node, producers  # noqa: E402


def _graph():
    w = numpy_helper.from_array(np.ones((2, 3), np.int8), "w_q")
    s = numpy_helper.from_array(np.array(0.5, np.float32), "w_s")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="/classifier/classifier.1/DQ"),
             helper.make_node("Relu", ["x"], ["r"], name="/features/features.1/Relu"),
             helper.make_node("Gemm", ["r", "w"], ["y"], name="/classifier/classifier.1/Gemm"),
             helper.make_node("Add", ["r", "r"], ["z"], name="/Add"),
             helper.make_node("Dropout", ["y"], ["d", ""], name="/classifier/classifier.2/Dropout")]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                             [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 2])], [w, s])


def test_producers_consumers_and_weights_behind_dequantize():
    g = _graph()
    prod, cons = producers(g), consumers(g)
    assert prod["y"].op_type == "Gemm" and "" not in prod and "x" not in prod
    assert [n.op_type for n in cons["r"]] == ["Gemm", "Add", "Add"]  # in graph order, once per input
    assert behind_dequantize("w", prod) == "w_q" and behind_dequantize("r", prod) == "r"


def test_module_of_node_and_initializer_bytes():
    assert module_of_node("/classifier/classifier.4/Gemm") == "classifier.4"
    assert module_of_node("/features/features.3/Conv_quant") == "features.3"
    assert module_of_node("/Flatten/Flatten") is None and module_of_node("") is None
    g = _graph()
    assert [initializer_bytes(i) for i in g.initializer] == [6, 4]
    i4 = helper.make_tensor("q4", TensorProto.INT4, [3], [1, 2, 3])
    assert initializer_bytes(i4) == 2
