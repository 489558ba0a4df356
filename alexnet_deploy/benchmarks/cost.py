"""FLOPs and weight bytes of an ONNX model (for the roofline columns of the report), from its graph.

Weight bytes are the initializers' actual storage: FP32 4 bytes, INT8 1, INT4 (or MatMulNBits' packed
uint8 blobs) half a byte per weight, so the bytes an image streams shrink with the quantization."""
from __future__ import annotations

import numpy as np

from alexnet_deploy.onnxgraph import behind_dequantize, initializer_bytes, producers


def model_cost(path) -> dict:
    """Per image: multiply-add FLOPs of Conv/Gemm/MatMul/MatMulNBits (2 per MAC) and the bytes of all
    weight initializers (those with at least one dimension) as stored."""
    import onnx
    from onnx import shape_inference

    from alexnet_deploy.errors import ModelLoadError

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends: one line, as onnx_props says it
        raise ModelLoadError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - contrib ops (MatMulNBits) can stop onnx's inference; weights suffice
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {i.name: i for i in model.graph.initializer}
    # weights of QDQ models sit behind DequantizeLinear: follow it back to the initializer
    producer = producers(model.graph)

    def weight_dims(name):
        name = behind_dequantize(name, producer)
        return list(inits[name].dims) if name in inits else shapes.get(name)

    layers = []
    attributed: set[str] = set()
    for node in model.graph.node:
        flops = 0
        if node.op_type == "Conv":
            w = weight_dims(node.input[1])
            out = shapes.get(node.output[0])
            if w and out:
                flops = 2 * int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            w = weight_dims(node.input[1])
            if w:
                flops = 2 * int(np.prod(w))
        elif node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            flops = 2 * int(attrs.get("K", 0)) * int(attrs.get("N", 0))
        else:
            continue
        names = _layer_initializers(node, inits, producer)
        attributed.update(names)
        layers.append({"name": node.name, "op": node.op_type, "flops": flops,
                       "weight_bytes": sum(initializer_bytes(inits[n]) for n in names if len(inits[n].dims)),
                       "compute": _compute_kind(node, producer)})
    weight_bytes = sum(initializer_bytes(i) for i in model.graph.initializer if len(i.dims))
    other = sum(initializer_bytes(i) for i in model.graph.initializer if len(i.dims) and i.name not in attributed)
    return {"flops_per_image": sum(r["flops"] for r in layers), "weight_bytes": weight_bytes, "layers": layers,
            "other_weight_bytes": other}


def _layer_initializers(node, inits: dict, producer: dict) -> list[str]:
    """The initializers a weighted layer reads besides its activation: weights, bias, scales and zero points,
    directly or through a DequantizeLinear of initializers (QDQ models)."""
    names = []
    for i in node.input[1:]:
        if i in inits:
            names.append(i)
        elif i in producer and producer[i].op_type == "DequantizeLinear":
            names += [x for x in producer[i].input if x in inits]
    return names


def _compute_kind(node, producer: dict) -> str:
    """'int8' where ONNX Runtime's CPU kernel computes in int8 (a QDQ layer whose activation comes through
    DequantizeLinear: QLinearConv / QGemm; MatMulNBits at accuracy level 4), else 'fp32'."""
    if node.op_type == "MatMulNBits":
        return "int8" if any(a.name == "accuracy_level" and a.i == 4 for a in node.attribute) else "fp32"
    src = producer.get(node.input[0])
    return "int8" if src is not None and src.op_type == "DequantizeLinear" else "fp32"


def layered_roofline(layers: list[dict], other_bytes: float, batch: int, throughput_ips: float,
                     compute_gflops: dict[str, float], bandwidth_gbs: float) -> dict:
    """The roofline summed over the layers, which run one after another: a batch takes at least
    sum over layers of max(batch x FLOPs / compute ceiling of the layer's kind, weight bytes / bandwidth), plus
    the unattributed weights' streaming time. A model of compute-bound convolutions and bandwidth-bound FC
    layers is bounded by both (the whole-model :func:`roofline` takes only the larger of its two totals).
    ``compute_gflops`` maps a layer's ``compute`` kind ('int8', 'fp32') to its ceiling."""
    if batch < 1 or bandwidth_gbs <= 0 or throughput_ips <= 0:
        raise ValueError("batch, bandwidth and throughput must be positive")
    mem_s = comp_s = 0.0
    per_layer = []
    for r in layers:
        c = compute_gflops.get(r["compute"]) or compute_gflops["fp32"]
        tc, tm = batch * r["flops"] / (c * 1e9), r["weight_bytes"] / (bandwidth_gbs * 1e9)
        per_layer.append({"name": r["name"], "bound": "memory" if tm > tc else "compute",
                          "floor_ms": 1e3 * max(tc, tm)})
        if tm > tc:
            mem_s += tm
        else:
            comp_s += tc
    mem_s += other_bytes / (bandwidth_gbs * 1e9)
    floor_s = mem_s + comp_s
    achieved_s = batch / throughput_ips
    return {"layered_floor_ms": 1e3 * floor_s, "layered_fraction": floor_s / achieved_s,
            "layered_memory_share": mem_s / floor_s if floor_s else 0.0, "layered_layers": per_layer}


def roofline(flops_per_image: float, weight_bytes: float, batch: int, throughput_ips: float,
             compute_gflops: float, bandwidth_gbs: float) -> dict:
    """The roofline of one benchmark row, with the weights as the memory traffic.

    Every batch streams all weights once, so an image moves ``weight_bytes / batch`` bytes; its arithmetic
    intensity is ``flops_per_image`` over that. The attainable rate is min(compute ceiling, bandwidth x
    intensity) and the row reaches ``achieved / attainable`` of it (activations, which also move, are not
    counted: at batch 1 they are a few percent of AlexNet's weights)."""
    if batch < 1 or weight_bytes <= 0 or compute_gflops <= 0 or bandwidth_gbs <= 0:
        raise ValueError("batch, weight bytes and both ceilings must be positive")
    bytes_per_image = weight_bytes / batch
    intensity = flops_per_image / bytes_per_image
    memory_gflops = bandwidth_gbs * intensity
    attainable = min(compute_gflops, memory_gflops)
    achieved = flops_per_image * throughput_ips / 1e9
    return {
        "weight_bytes_per_image": bytes_per_image,
        "intensity_flop_per_byte": intensity,
        "attainable_gflops": attainable,
        "bound": "memory" if memory_gflops < compute_gflops else "compute",
        "achieved_gflops": achieved,
        "achieved_weight_gbs": bytes_per_image * throughput_ips / 1e9,
        "fraction_of_attainable": achieved / attainable,
    }
