"""Where Q/DQ pairs go in a QDQ INT8 model.

``ort`` (``alexnet-calibrate``'s default, for ONNX Runtime): ONNX Runtime's placement - every tensor it can
quantize, so its CPU kernels run whole chains in INT8 (DequantizeLinear -> Conv -> QuantizeLinear becomes
QLinearConv) - except the network output: the last weighted layer's output (the logits) and everything after
it (a Softmax) stay float, the last Gemm reading INT8 inputs and writing float (an INT32 bias keeps it a
QGemm). Its activations are UINT8 asymmetric, [0, amax] after a ReLU (:func:`nonnegative_tensors`), which
lets ONNX Runtime fold each ReLU into its pair's clamp: for ONNX Runtime only (:func:`require_tensorrt_qdq`).

``tensorrt`` (what TensorRT engines are built from): TensorRT's guidance for explicit quantization - one Q/DQ pair on each input of the
weighted layers (the activation and the weight of every Conv, Gemm and MatMul) and nothing else. ReLU and
MaxPool commute with a symmetric quantizer, so TensorRT moves the pair across them and fuses it into the
layer; the network output (the logits) stays float.

``all``: every tensor (before and after each ReLU, after MaxPool and Flatten, and the logits) in symmetric
INT8, as ``ort`` was before its UINT8 activations; kept for comparison (docs/benchmarks/int8-placement.md).

The TensorRT placement runs 3-10x slower than ``ort``/``all`` on ONNX Runtime CPU (a Conv whose output is not
quantized is dequantized and run in float), hence two placements: see docs/benchmarks/int8-placement.md.

:func:`plan_qdq` answers, for an FP32 model, which nodes are quantized and which tensors get a Q/DQ pair; the
INT8 and INT4 paths both build from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.runtime.precision import StrChoice
from alexnet_deploy.onnxgraph import consumers as consumers_of
from alexnet_deploy.onnxgraph import module_of_node, producers

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


class Placement(StrChoice):
    """Where Q/DQ pairs go; a ``str`` (JSON, metadata and f-strings read ``"ort"``, ``"tensorrt"``, ``"all"``)."""

    ORT = "ort"
    TENSORRT = "tensorrt"
    ALL = "all"

    @classmethod
    def parse(cls, name: "str | Placement") -> "Placement":
        try:
            return cls(name)
        except ValueError:
            raise UserInputError(f"unknown Q/DQ placement {name!r}; choose {', '.join(p.value for p in cls)}") from None


# the deployment target -> the Q/DQ placement its INT8 models need (the one place this rule is written):
# ONNX Runtime (onnx, and Triton, which serves the ONNX models) gets the fast-CPU-kernel placement, TensorRT its
# own (symmetric Q/DQ on the inputs of Conv/Gemm only; it cannot parse UINT8 activations or INT32 biases)
TARGET_PLACEMENTS = {"onnx": Placement.ORT, "triton": Placement.ORT, "trt": Placement.TENSORRT,
                     "tensorrt": Placement.TENSORRT}


def placement_for(target: str) -> Placement:
    """The Q/DQ placement an INT8 model for ``target`` (onnx | triton | trt, or tensorrt) is calibrated with."""
    try:
        return TARGET_PLACEMENTS[target]
    except KeyError:
        raise UserInputError(f"unknown deployment target {target!r} for a Q/DQ placement; choose "
                             f"{', '.join(TARGET_PLACEMENTS)}") from None


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
    float_tail: list[str] = field(default_factory=list)  # nodes after the last weighted layer, left to float
    float_tensors: list[str] = field(default_factory=list)  # tensors whose Q/DQ pair is removed after ORT
    # filled by qdq.quantize: which weight channels were requantized against int16 pair overflow (overflow.py)
    overflow_fix: dict = field(default_factory=dict)

    @property
    def nodes_to_exclude(self) -> list[str]:
        return [*self.excluded, *(n for n in self.float_tail if n not in self.excluded)]

    def ort_kwargs(self) -> dict:
        return {"op_types_to_quantize": self.op_types, "nodes_to_exclude": self.nodes_to_exclude}


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


# ops whose output is non-negative whatever the input, and ops that keep a non-negative input non-negative
_NONNEGATIVE_OPS = {"Relu", "Softmax", "Sigmoid"}
_SIGN_PRESERVING_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
                        "Identity", "Transpose", "Squeeze", "Unsqueeze", "LRN", "Dropout", "Concat"}


def nonnegative_tensors(model: onnx.ModelProto) -> set[str]:
    """Activation tensors that are >= 0 by construction (a ReLU's output and what pooling, flattening or LRN
    make of it), read from the graph, not from data: the ``ort`` placement gives them the range [0, amax],
    a UINT8 zero point of 0 (twice the resolution of a symmetric range, and ONNX Runtime's quantizer then drops
    the ReLU into the clamp)."""
    inits = {i.name for i in model.graph.initializer}
    out: set[str] = set()
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        data = [i for i in n.input[:1] if i] if n.op_type != "Concat" else [i for i in n.input if i]
        if n.op_type in _NONNEGATIVE_OPS or (
                n.op_type in _SIGN_PRESERVING_OPS and data and all(i in out and i not in inits for i in data)):
            out.update(o for o in n.output[:1] if o)
    return out


def output_tail(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(nodes, tensors) from the last weighted layers' outputs to the graph outputs: walking back from each graph
    output through non-weighted nodes (Softmax, Reshape...) until a Conv/Gemm/MatMul output is reached."""
    producer = producers(model.graph)
    inits = {i.name for i in model.graph.initializer}
    nodes: list[str] = []
    tensors: list[str] = []
    todo = [o.name for o in model.graph.output]
    while todo:
        t = todo.pop()
        if t in tensors or t in inits:
            continue
        tensors.append(t)
        node = producer.get(t)
        if node is None or node.op_type in WEIGHTED_OPS:
            continue
        if node.name not in nodes:
            nodes.append(node.name)
        todo += [i for i in node.input if i]
    return nodes, tensors


def remove_qdq_pairs(model: onnx.ModelProto, tensors: list[str] | tuple[str, ...]) -> int:
    """Remove the QuantizeLinear -> DequantizeLinear pairs ONNX Runtime put on ``tensors``, in place: their
    consumers (and a graph output) read the float tensor again. Returns the number of pairs removed."""
    g = model.graph
    consumers = consumers_of(g)
    producer = producers(g)
    outputs = {o.name for o in g.output}
    drop: list[onnx.NodeProto] = []
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        src = q.input[0]
        dqs = consumers.get(q.output[0], [])
        # a graph output keeps its name: ONNX Runtime renamed the float tensor to <name>_QuantizeLinear_Input
        name = next((d.output[0] for d in dqs if d.op_type == "DequantizeLinear" and d.output[0] in outputs), None)
        wanted = name if name is not None else src
        if wanted not in tensors and src not in tensors:
            continue
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        if name is not None and src not in outputs and src in producer:  # give the float tensor its name back
            for n in [producer[src], *consumers.get(src, [])]:
                for lst in (n.output, n.input):
                    for k, v in enumerate(lst):
                        if v == src:
                            lst[k] = name
            src = name
        for d in dqs:
            for c in consumers.get(d.output[0], []):
                for k, v in enumerate(c.input):
                    if v == d.output[0]:
                        c.input[k] = src
            drop.append(d)
        drop.append(q)
    for n in drop:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used and i.name not in outputs]:
        g.initializer.remove(init)  # the removed pairs' scales and zero points
    return sum(1 for n in drop if n.op_type == "QuantizeLinear")


def quantize_float_output_bias(model: onnx.ModelProto) -> list[str]:
    """Give each Gemm that reads INT8 activations and weights but writes float (the last layer of ``ort``)
    an INT32 bias behind DequantizeLinear (scale = activation scale x weight scale, zero point 0), in place.

    ONNX Runtime (1.32) fuses DQ -> Gemm into QGemm with a float output only when the bias is such an INT32
    DequantizeLinear; with the float bias ``QuantizeBias: False`` leaves, it keeps the Gemm in float and
    dequantizes its INT8 weights on every call (torchvision's 4096x1000 layer: 1.3 ms of a 5.9 ms batch-1 run
    against 0.14 ms fused, on the 2-core EPYC). The INT32 bias is exact to half a bias step (act x weight
    scale), far below the layer's INT8 rounding. A channel whose scale is 0 or whose bias would overflow INT32
    keeps the Gemm as it was. Returns the Gemm nodes changed (TensorRT placements never call this: its
    parser rejects INT32 biases behind DequantizeLinear)."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = producers(g)
    consumers = consumers_of(g)

    def dq_scale(name: str):
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            return None
        return numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)

    changed = []
    for n in list(g.node):
        if n.op_type != "Gemm" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        if any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], [])):
            continue  # a quantized output: ONNX Runtime fuses it already (float bias and all)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            continue
        sa, sw = dq_scale(n.input[0]), dq_scale(n.input[1])
        if sa is None or sw is None or sa.ndim != 0:
            continue
        bias = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
        scale = np.broadcast_to(sa * sw, bias.shape).astype(np.float32)
        if bias.ndim != 1 or np.any(scale <= 0):
            continue
        q = np.round(bias / scale.astype(np.float64))
        if np.any(np.abs(q) > 2 ** 31 - 1):
            continue
        base = n.input[2]
        names = (f"{base}_quantized", f"{base}_scale", f"{base}_zero_point", f"{base}_DequantizeLinear_Output")
        g.initializer.extend([numpy_helper.from_array(q.astype(np.int32), names[0]),
                              numpy_helper.from_array(scale, names[1]),
                              numpy_helper.from_array(np.zeros(bias.shape, np.int32), names[2])])
        dq = onnx.helper.make_node("DequantizeLinear", list(names[:3]), [names[3]], name=f"{base}_DequantizeLinear",
                                   axis=0)
        g.node.insert(list(g.node).index(n), dq)
        n.input[2] = names[3]
        changed.append(n.name)
    if changed:
        used = {i for node in g.node for i in node.input}
        for init in [i for i in g.initializer if i.name not in used]:
            g.initializer.remove(init)  # the float biases now behind DequantizeLinear
    return changed


def tensorrt_qdq_problem(model: onnx.ModelProto) -> str | None:
    """Why TensorRT's ONNX parser cannot take this QDQ model (None when it can): TensorRT's explicit
    quantization is symmetric, signed 8-bit (or smaller) with zero points of 0, and no INT32 behind
    DequantizeLinear. The ``ort`` placement's UINT8 asymmetric activations and INT32 biases are for ONNX
    Runtime's CPU kernels only."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type in (
                onnx.TensorProto.INT32, onnx.TensorProto.UINT8):
            return "INT32/UINT8 tensors behind DequantizeLinear"
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and (zp.data_type == onnx.TensorProto.UINT8 or np.any(numpy_helper.to_array(zp) != 0)):
            return "asymmetric UINT8 activations (zero points other than 0)"
    return None


def require_tensorrt_qdq(model: onnx.ModelProto, name: str) -> None:
    """One clear line when a QDQ model calibrated for ONNX Runtime is handed to a TensorRT stack."""
    problem = tensorrt_qdq_problem(model)
    if problem:
        raise UserInputError(f"{name} was calibrated for ONNX Runtime ({problem}), which TensorRT cannot parse; "
                             "give the FP32 ONNX, or calibrate with alexnet-calibrate --placement tensorrt")


def plan_qdq(model: onnx.ModelProto, placement: "str | Placement" = Placement.ORT,
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
    if placement is Placement.ORT:
        # ONNX Runtime quantizes the last weighted layer's output whatever nodes_to_exclude says (its operator
        # quantizers mark their outputs); that pair is removed after quantize_static (remove_qdq_pairs)
        tail_nodes, tail_tensors = output_tail(model)
        return QdqPlan(placement, [n.name for n in model.graph.node if n.name not in excluded + tail_nodes],
                       float_activations(model), weights, excluded, None, {}, tail_nodes, tail_tensors)
    return QdqPlan(placement, [n.name for n in model.graph.node if n.name not in excluded], float_activations(model),
                   weights, excluded, None, {})


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


__all__ = ["Placement", "QdqPlan", "plan_qdq", "output_tail", "remove_qdq_pairs", "nonnegative_tensors", "quantize_float_output_bias", "tensorrt_qdq_problem",
           "require_tensorrt_qdq", "layer_names", "float_activations", "count_qdq", "WEIGHTED_OPS"]
