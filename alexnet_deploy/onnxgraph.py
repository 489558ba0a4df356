"""Small helpers on an ONNX graph, shared by exporter/, calibration/ and benchmarks/ (a low layer: it imports
nothing of the package, and onnx only where a function needs it).

- ``module_of_node``: the PyTorch module a node name written by torch.onnx belongs to
  (``/features/features.3/Conv`` -> ``features.3``), QDQ suffixes ignored;
- ``producers`` / ``consumers``: tensor name -> the node writing it / the nodes reading it;
- ``behind_dequantize``: the tensor a DequantizeLinear reads (a QDQ model's weight initializer);
- ``initializer_bytes``: the bytes one initializer takes as stored (sub-byte types packed)."""
from __future__ import annotations

import re

import numpy as np

_NODE = re.compile(r"^/(?:.*/)?(?P<module>[A-Za-z_][\w.]*\.\d+|avgpool|Flatten)/[A-Za-z]+(?:_\d+)?$")
_QDQ_SUFFIX = re.compile(r"(_quant|_QuantizeLinear|_DequantizeLinear|_dequant)$")

# ONNX element types stored with fewer than 8 bits per element (two per byte)
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4}


def module_of_node(node_name: str) -> str | None:
    """``/classifier/classifier.4/Gemm`` -> ``classifier.4``; None when the name carries no module."""
    name = _QDQ_SUFFIX.sub("", node_name or "")
    m = _NODE.match(name)
    if not m:
        return None
    module = m.group("module")
    return None if module == "Flatten" else module


def producers(graph) -> dict:
    """Tensor name -> the node that writes it (unnamed optional outputs left out; a name written twice maps
    to the later node, as graph order reads)."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph) -> dict[str, list]:
    """Tensor name -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def behind_dequantize(name: str, producer: dict) -> str:
    """The input of the DequantizeLinear that writes ``name`` (its quantized initializer), else ``name``."""
    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        return node.input[0]
    return name


def initializer_bytes(init) -> int:
    """Bytes one ONNX initializer takes as stored (packed sub-byte types rounded up to whole bytes)."""
    from onnx import TensorProto, helper

    n = int(np.prod(init.dims)) if len(init.dims) else 1
    name = TensorProto.DataType.Name(init.data_type)
    if name in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[name] + 7) // 8
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
