"""FLOPs and weight bytes of an ONNX model (for the roofline line of the report), from its graph."""
from __future__ import annotations

import numpy as np


def model_cost(path) -> dict:
    """Per image: multiply-add FLOPs of Conv/Gemm/MatMul (2 per MAC) and the bytes of all initializers."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path))
    inferred = shape_inference.infer_shapes(model)
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
    weight_bytes = sum(int(np.prod(i.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(i.data_type)).itemsize
                       for i in model.graph.initializer if len(i.dims))
    return {"flops_per_image": flops, "weight_bytes": weight_bytes}
