"""FP32 -> FP16 ONNX (no torch: ``alexnet-export trt`` uses it on devices that have only onnx and
onnxruntime, for the strongly typed TensorRT libraries)."""
from __future__ import annotations

import onnx

from alexnet_deploy.errors import ExportError


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute; graph inputs and outputs stay float32 (Cast nodes at the edges), so
    callers feed and read the same arrays as for the FP32 model. TensorRT 11 / TensorRT-RTX (strongly
    typed) build FP16 engines from this graph."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    _toposort(converted.graph)  # the converter appends its input Casts at the end of the node list
    return converted


def _toposort(graph: onnx.GraphProto) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ExportError("the FP16 graph has a cycle or a dangling input; export FP32 instead")
        for n in progress:
            ordered.append(n)
            ready.update(n.output)
        pending = [n for n in pending if n not in progress]
    del graph.node[:]
    graph.node.extend(ordered)
