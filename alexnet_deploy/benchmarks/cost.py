"""FLOPs and weight bytes of an ONNX model (for the roofline columns of the report), from its graph.

Weight bytes are the initializers' actual storage: FP32 4 bytes, INT8 1, INT4 (or MatMulNBits' packed
uint8 blobs) half a byte per weight, so the bytes an image streams shrink with the quantization."""
from __future__ import annotations

import numpy as np

# ONNX element types stored with fewer than 8 bits per element (two per byte)
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4}


def initializer_bytes(init) -> int:
    """Bytes one ONNX initializer takes as stored (packed sub-byte types rounded up to whole bytes)."""
    from onnx import TensorProto, helper

    n = int(np.prod(init.dims)) if len(init.dims) else 1
    name = TensorProto.DataType.Name(init.data_type)
    if name in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[name] + 7) // 8
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def model_cost(path) -> dict:
    """Per image: multiply-add FLOPs of Conv/Gemm/MatMul/MatMulNBits (2 per MAC) and the bytes of all
    weight initializers (those with at least one dimension) as stored."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
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
    producer = {o: n for n in model.graph.node for o in n.output}

    def weight_dims(name):
        n = producer.get(name)
        if n is not None and n.op_type == "DequantizeLinear":
            name = n.input[0]
        return list(inits[name].dims) if name in inits else shapes.get(name)

    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weight_dims(node.input[1])
            out = shapes.get(node.output[0])
            if w and out:
                flops += 2 * int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            w = weight_dims(node.input[1])
            if w:
                flops += 2 * int(np.prod(w))
        elif node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            flops += 2 * int(attrs.get("K", 0)) * int(attrs.get("N", 0))
    weight_bytes = sum(initializer_bytes(i) for i in model.graph.initializer if len(i.dims))
    return {"flops_per_image": flops, "weight_bytes": weight_bytes}


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
