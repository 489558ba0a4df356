"""Where Q/DQ pairs go in a QDQ INT8 model.

``tensorrt`` (default): TensorRT's guidance for explicit quantization - one Q/DQ pair on each input of the
weighted layers (the activation and the weight of every Conv, Gemm and MatMul) and nothing else. ReLU and
MaxPool commute with a symmetric quantizer, so TensorRT moves the pair across them and fuses it into the
layer; the network output (the logits) stays float.

``all``: ONNX Runtime's default - every tensor ONNX Runtime can quantize (before and after each ReLU, after
MaxPool and Flatten, and the logits). ONNX Runtime's CPU kernels then run whole chains in INT8 (QLinearConv
with an INT8 output), which may be faster on CPU; it is kept as an option for that and measured in
docs/benchmarks/int8-*.md.

:func:`plan_qdq` answers, for an FP32 model, which nodes are quantized and which tensors get a Q/DQ pair; the
INT8 and INT4 paths both build from it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import onnx

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.exporter.naming import module_of_node

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


class Placement(str, enum.Enum):
    TENSORRT = "tensorrt"
    ALL = "all"

    @classmethod
    def parse(cls, name: "str | Placement") -> "Placement":
        try:
            return cls(name)
        except ValueError:
            raise UserInputError(f"unknown Q/DQ placement {name!r}; choose {', '.join(p.value for p in cls)}") from None


@dataclass
class QdqPlan:
    """Which nodes get quantized and which tensors get a Q/DQ pair, plus the ONNX Runtime options that do it."""

    placement: Placement
    nodes: list[str]  # ONNX node names that are quantized (weighted layers, or every quantizable node for ``all``)
    activations: list[str]  # activation tensors that get a Q/DQ pair (what calibration must measure)
    weights: list[str]  # weight initializers that get a Q/DQ pair
    excluded: list[str] = field(default_factory=list)  # weighted nodes kept in float
    op_types: list[str] | None = None  # onnxruntime op_types_to_quantize (None: all)
    extra_options: dict = field(default_factory=dict)  # placement-specific onnxruntime extra_options

    def ort_kwargs(self) -> dict:
        return {"op_types_to_quantize": self.op_types, "nodes_to_exclude": list(self.excluded)}


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """PyTorch module name -> ONNX node name of every Conv/Gemm/MatMul (the layers INT8 quantizes)."""
    return {module_of_node(n.name) or n.name: n.name for n in weighted_nodes(model)}


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Every float activation tensor: the graph inputs and every node output (initializers excluded)."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits
             and i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    for n in model.graph.node:
        if n.op_type in ("Shape", "Constant", "Size"):
            continue
        names += [o for o in n.output if o]
    seen: set[str] = set()
    return [t for t in names if not (t in seen or seen.add(t))]


def plan_qdq(model: onnx.ModelProto, placement: "str | Placement" = Placement.TENSORRT,
             keep_float: list[str] | tuple[str, ...] = ()) -> QdqPlan:
    """The Q/DQ plan for an FP32 ``model``; ``keep_float`` names PyTorch modules (or ONNX nodes) left in float."""
    placement = Placement.parse(placement)
    layers = layer_names(model)
    unknown = [m for m in keep_float if m not in layers and m not in layers.values()]
    if unknown:
        raise UserInputError(f"cannot keep {unknown} in float: not a quantizable layer (have {', '.join(layers)})")
    excluded = [layers.get(m, m) for m in keep_float]
    inits = {i.name for i in model.graph.initializer}
    quantized = [n for n in weighted_nodes(model) if n.name not in excluded]
    weights = [n.input[1] for n in quantized if len(n.input) > 1 and n.input[1] in inits]
    if placement is Placement.TENSORRT:
        activations = []
        for n in quantized:
            if n.input[0] not in inits and n.input[0] not in activations:
                activations.append(n.input[0])
        return QdqPlan(placement, [n.name for n in quantized], activations, weights, excluded, list(WEIGHTED_OPS),
                       {"OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS)})
    return QdqPlan(placement, [n.name for n in model.graph.node if n.name not in excluded], float_activations(model),
                   weights, excluded, None, {})


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


__all__ = ["Placement", "QdqPlan", "plan_qdq", "layer_names", "float_activations", "count_qdq", "WEIGHTED_OPS"]
