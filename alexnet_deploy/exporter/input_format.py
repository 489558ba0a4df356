"""Graph surgery at the edges of an exported ONNX model (onnx only, no torch): raw-pixel inputs with the
normalization as explicit nodes, a normalization correction for stacks with fixed constants, a softmax output,
renamed tensors and a static batch.

The normalization is *not* folded into conv1's weights: conv1 zero-pads in normalized space, so a folded model
differs from the original at the borders. Explicit ``Div``/``Sub``/``Div`` nodes compute exactly what
``runtime.preprocess.normalize_pixels`` computes, in the same order and precision.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alexnet_deploy.errors import ExportError, UserInputError
from alexnet_deploy.runtime.metadata import ModelMetadata
from alexnet_deploy.runtime.preprocess import INPUT_FORMATS

PIXEL_INPUT = "pixels"  # graph input of a raw-pixel model; the normalized tensor keeps the original input's name


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = ({i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
             | {t for n in graph.node for t in (*n.input, *n.output)} | {n.name for n in graph.node})
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _const(graph: onnx.GraphProto, base: str, values, shape) -> str:
    name = _unique(graph, base)
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32).reshape(shape), name))
    return name


def _only_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"expected a model with one input, found {len(inputs)}")
    return inputs[0]


def _batch_dim(vi: onnx.ValueInfoProto):
    d = vi.type.tensor_type.shape.dim[0]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch")


def _prepend(graph: onnx.GraphProto, nodes: list, new_input: onnx.ValueInfoProto, old_input: str) -> None:
    """Make ``new_input`` the graph's input, ``nodes`` (ending in the tensor ``old_input``) in front of the rest."""
    keep = [i for i in graph.input if i.name != old_input]
    del graph.input[:]
    graph.input.extend([new_input, *keep])
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])


def add_pixel_input(model: onnx.ModelProto, meta: ModelMetadata, input_format: str) -> tuple[onnx.ModelProto, ModelMetadata]:
    """A model taking normalized float (N, 3, H, W) -> one taking raw RGB pixels: ``uint8-nhwc`` (N, H, W, 3)
    uint8, or ``float-0-255`` (N, 3, H, W) float32 in 0..255 (or ``float-nhwc``: the normalized floats channels
    last, one Transpose). Adds Cast/Transpose (uint8 only) and
    Div(255) -> Sub(mean) -> Div(std) as explicit nodes; returns the new model and its metadata."""
    if input_format not in INPUT_FORMATS:
        raise UserInputError(f"unknown input format {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
    if meta.input_format != "float-nchw":
        raise UserInputError(f"the model already takes {meta.input_format!r} input")
    if input_format == "float-nchw":
        return model, meta
    model = copy.deepcopy(model)
    g = model.graph
    old = _only_input(g)
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError("raw-pixel input needs a model whose input is float32")
    prep = meta.preprocessing
    h = w = prep.crop
    n = _batch_dim(old)
    new_name = _unique(g, PIXEL_INPUT)
    nodes, x = [], new_name
    if input_format == "float-nhwc":  # normalized floats channels last: one Transpose, no normalization nodes
        new = helper.make_tensor_value_info(new_name, TensorProto.FLOAT, [n, h, w, 3])
        nodes = [helper.make_node("Transpose", [x], [old.name], name=_unique(g, "InputToNCHW"), perm=[0, 3, 1, 2])]
        _prepend(g, nodes, new, old.name)
        extra = {**meta.extra, "pixel_input": {"normalized_tensor": old.name, "nodes": [nodes[0].name],
                                               "initializers": []}}
        return model, replace(meta, input_name=new_name, input_format=input_format, extra=extra)
    if input_format == "uint8-nhwc":
        new = helper.make_tensor_value_info(new_name, TensorProto.UINT8, [n, h, w, 3])
        cast, nchw = _unique(g, "pixels_float"), _unique(g, "pixels_nchw")
        nodes += [helper.make_node("Cast", [x], [cast], name=_unique(g, "PixelsToFloat"), to=TensorProto.FLOAT),
                  helper.make_node("Transpose", [cast], [nchw], name=_unique(g, "PixelsToNCHW"), perm=[0, 3, 1, 2])]
        x = nchw
    else:
        new = helper.make_tensor_value_info(new_name, TensorProto.FLOAT, [n, 3, h, w])
    scale = _const(g, "pixel_scale", 255.0, [])
    mean = _const(g, "pixel_mean", prep.mean, [1, 3, 1, 1])
    std = _const(g, "pixel_std", prep.std, [1, 3, 1, 1])
    unit, centred = _unique(g, "pixels_0_1"), _unique(g, "pixels_centred")
    nodes += [helper.make_node("Div", [x, scale], [unit], name=_unique(g, "PixelsTo01")),
              helper.make_node("Sub", [unit, mean], [centred], name=_unique(g, "SubtractMean")),
              helper.make_node("Div", [centred, std], [old.name], name=_unique(g, "DivideStd"))]
    _prepend(g, nodes, new, old.name)
    extra = {**meta.extra, "pixel_input": {"normalized_tensor": old.name, "nodes": [nd.name for nd in nodes],
                                           "initializers": [scale, mean, std]}}
    return model, replace(meta, input_name=new_name, input_format=input_format, extra=extra)


def strip_pixel_input(model: onnx.ModelProto, meta: ModelMetadata) -> tuple[onnx.ModelProto, ModelMetadata]:
    """Undo :func:`add_pixel_input` (for exports that put their own input stage in front)."""
    if meta.input_format == "float-nchw":
        return model, meta
    info = meta.extra.get("pixel_input")
    if not isinstance(info, dict) or "normalized_tensor" not in info:
        raise UserInputError(f"the model takes {meta.input_format!r} input but its metadata does not say which nodes "
                             "do the normalization; export it again with alexnet-export onnx")
    model = copy.deepcopy(model)
    g = model.graph
    drop_nodes, drop_inits = set(info["nodes"]), set(info["initializers"])
    target = info["normalized_tensor"]
    old_in = _only_input(g)
    n = _batch_dim(old_in)
    kept = [nd for nd in g.node if nd.name not in drop_nodes]
    del g.node[:]
    g.node.extend(kept)
    inits = [i for i in g.initializer if i.name not in drop_inits]
    del g.initializer[:]
    g.initializer.extend(inits)
    c = meta.preprocessing.crop
    new = helper.make_tensor_value_info(target, TensorProto.FLOAT, [n, 3, c, c])
    rest = [i for i in g.input if i.name != old_in.name]
    del g.input[:]
    g.input.extend([new, *rest])
    extra = {k: v for k, v in meta.extra.items() if k != "pixel_input"}
    return model, replace(meta, input_name=target, input_format="float-nchw", extra=extra)


def correct_normalization(model: onnx.ModelProto, meta: ModelMetadata, mean, std,
                          input_name: str | None = None) -> tuple[onnx.ModelProto, ModelMetadata]:
    """A model expecting ``(x/255 - meta.mean) / meta.std`` -> one expecting ``(x/255 - mean) / std`` (what a
    stack with fixed constants feeds): Mul(std) -> Add(mean) undo the stack's normalization, Sub(meta.mean) ->
    Div(meta.std) apply the model's. No nodes when the constants already agree. ``input_name`` renames the input."""
    if meta.input_format != "float-nchw":
        raise UserInputError("correct_normalization needs a model with normalized float input")
    model = copy.deepcopy(model)
    g = model.graph
    old = _only_input(g)
    prep = meta.preprocessing
    name = input_name or old.name
    same = np.allclose(np.float32(mean), np.float32(prep.mean), rtol=0, atol=0) and \
        np.allclose(np.float32(std), np.float32(prep.std), rtol=0, atol=0)
    if same:
        if name != old.name:
            rename_tensor(model, old.name, name)
    else:
        new_name = name if name != old.name else _unique(g, old.name + "_stack")
        new = copy.deepcopy(old)
        new.name = new_name
        s_in, m_in = _const(g, "stack_std", std, [1, 3, 1, 1]), _const(g, "stack_mean", mean, [1, 3, 1, 1])
        m_out, s_out = _const(g, "model_mean", prep.mean, [1, 3, 1, 1]), _const(g, "model_std", prep.std, [1, 3, 1, 1])
        a, b, c = _unique(g, "undo_std"), _unique(g, "pixels_0_1"), _unique(g, "pixels_centred")
        nodes = [helper.make_node("Mul", [new_name, s_in], [a], name=_unique(g, "UndoStackStd")),
                 helper.make_node("Add", [a, m_in], [b], name=_unique(g, "UndoStackMean")),
                 helper.make_node("Sub", [b, m_out], [c], name=_unique(g, "SubtractModelMean")),
                 helper.make_node("Div", [c, s_out], [old.name], name=_unique(g, "DivideModelStd"))]
        _prepend(g, nodes, new, old.name)
    prep2 = replace(prep, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    return model, replace(meta, input_name=name, preprocessing=prep2)


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere (graph inputs/outputs, node inputs/outputs, value_info), in place."""
    if old == new:
        return
    g = model.graph
    if new in {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.initializer}:
        raise ExportError(f"cannot rename {old!r} to {new!r}: the graph already has a tensor named {new!r}")
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.name == old:
            vi.name = new
    for nd in g.node:
        for seq in (nd.input, nd.output):
            for i, t in enumerate(seq):
                if t == old:
                    seq[i] = new


def probabilities_output(model: onnx.ModelProto, meta: ModelMetadata,
                         output_name: str) -> tuple[onnx.ModelProto, ModelMetadata]:
    """End in softmax probabilities named ``output_name`` (DeepStream's classifier parser and jetson-inference's
    --threshold read the output as probabilities). A model already ending in softmax is only renamed."""
    model = copy.deepcopy(model)
    g = model.graph
    if len(g.output) != 1:
        raise ExportError(f"expected a model with one output, found {len(g.output)}")
    out = g.output[0]
    if meta.output_kind == "probabilities":
        rename_tensor(model, out.name, output_name)
    else:
        if output_name in {t for n in g.node for t in (*n.input, *n.output)}:
            raise ExportError(f"the graph already has a tensor named {output_name!r}")
        logits = out.name
        g.node.append(helper.make_node("Softmax", [logits], [output_name], name=_unique(g, "Probabilities"), axis=1))
        out.name = output_name
    return model, replace(meta, output_name=output_name, output_kind="probabilities")


def set_static_batch(model: onnx.ModelProto, meta: ModelMetadata, batch: int) -> tuple[onnx.ModelProto, ModelMetadata]:
    """Fix the batch dimension of the input and output (stacks that build engines without optimization profiles)."""
    model = copy.deepcopy(model)
    g = model.graph
    for vi in (_only_input(g), *g.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = batch
    del g.value_info[:]  # inferred again below with the fixed batch
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and friends
        raise ExportError(f"the graph does not take a static batch of {batch}: {str(exc).splitlines()[0][:200]}") from None
    return model, replace(meta, batch=batch)


def check(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"onnx.checker rejected the {what}: {str(exc).splitlines()[0][:300]}") from None


# ------------------------------------------------------------------------------------ ONNX from elsewhere

ADOPTABLE_FORMATS = ("float-nchw", "float-nhwc", "uint8-nhwc", "float-0-255")


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def adopt_onnx(model: onnx.ModelProto, meta: ModelMetadata, source: str) -> tuple[onnx.ModelProto, ModelMetadata]:
    """An ONNX model made elsewhere (Keras' ``model.export(format="onnx")``, tf2onnx, ...) with ``meta`` stamped
    on it after checking that its one input and one output are what ``meta`` describes: layout and size
    (``meta.input_format``), dtype and class count. The graph itself is kept as it is; a last Softmax makes the
    output ``probabilities``. Raises one line naming what differs."""
    from alexnet_deploy.runtime.metadata import PREFIX

    if any(p.key.startswith(PREFIX) for p in model.metadata_props):
        raise UserInputError(f"{source} already carries alexnet-deploy metadata; use it as it is")
    if meta.input_format not in ADOPTABLE_FORMATS:
        raise UserInputError(f"--input-format {meta.input_format} is not one of {', '.join(ADOPTABLE_FORMATS)}")
    model = copy.deepcopy(model)
    g = model.graph
    try:
        inp = _only_input(g)
    except ExportError as exc:
        raise UserInputError(f"{source}: {exc}") from None
    if len(g.output) != 1:
        raise UserInputError(f"{source}: expected a model with one output, found {len(g.output)}")
    out = g.output[0]
    want_dtype = TensorProto.UINT8 if meta.input_format == "uint8-nhwc" else TensorProto.FLOAT
    if inp.type.tensor_type.elem_type != want_dtype:
        got = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise UserInputError(f"{source}: input {inp.name!r} is {got}, --input-format {meta.input_format} means "
                             f"{TensorProto.DataType.Name(want_dtype)}")
    dims = _dims(inp)
    want = list(meta.input_dims)
    if len(dims) != 4 or [d for d in dims[1:]] != want:
        hint = ""
        if len(dims) == 4 and sorted(map(str, dims[1:])) == sorted(map(str, want)):
            hint = f"; the layout is the other one: --input-format {'float-nhwc' if dims[-1] == 3 else 'float-nchw'}"
        raise UserInputError(f"{source}: input {inp.name!r} has shape {dims}, --input-format {meta.input_format} with "
                             f"input size {meta.preprocessing.crop} means (N, {', '.join(map(str, want))}){hint}")
    odims = _dims(out)
    if len(odims) != 2 or (isinstance(odims[1], int) and odims[1] != meta.num_classes):
        raise UserInputError(f"{source}: output {out.name!r} has shape {odims}, expected (N, {meta.num_classes}) for "
                             f"{meta.num_classes} classes")
    last = next((nd for nd in g.node if out.name in nd.output), None)
    kind = "probabilities" if last is not None and last.op_type == "Softmax" else "logits"
    batch = dims[0] if isinstance(dims[0], int) else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    extra = {**meta.extra, "adopted_from": {"producer": f"{model.producer_name} {model.producer_version}".strip(),
                                            "input": inp.name, "output": out.name}}
    return model, replace(meta, input_name=inp.name, output_name=out.name, output_kind=kind, batch=batch,
                          opset=opset, extra=extra)


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """``Constant`` nodes (with a tensor ``value``) -> initializers, in place: ONNX Runtime's static quantizer finds
    no quantization parameters for a Constant node's output (Keras' ONNX export has them). Returns how many."""
    g = model.graph
    moved = 0
    for nd in list(g.node):
        if nd.op_type == "Constant" and len(nd.attribute) == 1 and nd.attribute[0].name == "value":
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(nd.attribute[0].t), nd.output[0]))
            g.node.remove(nd)
            moved += 1
    return moved
