"""INT4 weight-only classifier layers on top of an INT8 QDQ model (convolutions stay as calibrated).

At batch 1 AlexNet streams all of its fully-connected weights for every image (94 % of the parameters), so
fewer bytes is the only way past the memory wall. Each classifier ``Gemm`` of the INT8 QDQ model becomes
``MatMul`` (+ ``Add`` bias) on its weights (the INT8 ones dequantized: they carry what the INT8 stage
changed, such as cross-layer equalization), with the activation Q/DQ around it removed (weight-only: activations stay float), and onnxruntime.quantization's
``MatMulNBitsQuantizer`` turns it into 4-bit block-wise symmetric weights (round to nearest), in one of
two forms:

``ort``  ``com.microsoft.MatMulNBits`` (accuracy level 4: int8 activations inside the kernel), the
         fastest CPU form of ONNX Runtime; TensorRT cannot parse it.
``trt``  the standard form: opset-21 blocked ``DequantizeLinear`` on INT4 weights feeding ``MatMul``,
         which TensorRT's ONNX parser reads (INT4 weight-only quantization) and ONNX Runtime also runs.

Per-layer sensitivity (one FC layer in INT4 at a time) names what each layer costs; ``max_drop`` keeps
the worst layers in INT8 until the held-out drop fits the budget.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from alexnet_deploy.calibration.placement import quantize_float_output_bias, tensorrt_qdq_problem
from alexnet_deploy.calibration.search import keep_until_within, needs_search
from alexnet_deploy.errors import UserInputError
from alexnet_deploy.fileio import sha256_file
from alexnet_deploy.onnxgraph import behind_dequantize, initializer_bytes, module_of_node, producers
from alexnet_deploy.onnxgraph import consumers as consumers_of

FORMS = ("ort", "trt")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits supports powers of two from 16
# 256: on the 2-core EPYC MatMulNBits (level 4) ran torchvision's three FC layers in 0.63 ms at batch 1 with
# blocks of 256 against 0.75 ms with 128 (per-block work, not the 3 % more scale bytes, is what 128 costs),
# at the same held-out accuracy on digits (docs/benchmarks/int4-torchvision-epyc.md)
DEFAULT_BLOCK_SIZE = 256
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations, int32 accumulation (the fast CPU path)
TRT_OPSET = 21  # INT4 tensors and blocked DequantizeLinear
METHOD = "rtn-blockwise-symmetric"  # round to nearest per block of block_size input features


@dataclass
class Int4Config:
    block_size: int = DEFAULT_BLOCK_SIZE
    form: str = "ort"
    keep_int8: list[str] = field(default_factory=list)  # FC modules (e.g. classifier.6) left in INT8

    def validate(self) -> None:
        if self.form not in FORMS:
            raise UserInputError(f"unknown INT4 form {self.form!r}; choose {' or '.join(FORMS)}")
        if self.block_size not in BLOCK_SIZES:
            raise UserInputError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                                 f"got {self.block_size}")


def fc_layers(model: onnx.ModelProto) -> dict[str, str]:
    """PyTorch module name -> ONNX node name of each fully-connected layer (Gemm) of the model."""
    return {module_of_node(n.name) or n.name: n.name for n in model.graph.node if n.op_type == "Gemm"}


def int4_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Module -> how its weights are stored, for every layer whose weights are 4-bit in ``model``:
    ``MatMulNBits`` (bits=4) or ``DequantizeLinear`` of an INT4 initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 4 for a in n.attribute):
            out[module_of_node(n.name.removesuffix("_Q4")) or n.name] = "MatMulNBits"
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits \
                and inits[n.input[0]].data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            out[module_of_node(n.name.removesuffix("_DQ_Q4")) or n.name] = "DequantizeLinear-int4"
    return out


def _constant(model: onnx.ModelProto, name: str, producer: dict) -> np.ndarray | None:
    """A float constant: an initializer, or a DequantizeLinear of initializers (per-tensor or per-axis)."""
    inits = {i.name: i for i in model.graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input if i):
        return None
    x = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    attrs = {a.name: a.i for a in dq.attribute}
    if attrs.get("block_size"):
        return None  # blocked: not what INT8 calibration writes
    if np.ndim(scale) == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[attrs.get("axis", 1)] = -1
        scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return (x - zp) * scale


def _gemm_weights(model: onnx.ModelProto, gemm: onnx.NodeProto, producer: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(W as [K, N], bias or None) of an FC Gemm, read from the INT8 model itself: its INT8 weights
    dequantized (one more rounding, far below INT4's step), its float bias. Reading them here, not from the
    FP32 model, keeps whatever the INT8 stage changed (cross-layer equalization rescales FC pairs)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("transA", 0):
        raise UserInputError(f"{gemm.name}: Gemm with transA is not a fully-connected layer")
    w = _constant(model, gemm.input[1], producer)
    if w is None or w.ndim != 2:
        raise UserInputError(f"{gemm.name}: the weights are not a constant 2-D tensor (or its INT8 DequantizeLinear)")
    w = w * float(attrs.get("alpha", 1.0))
    if attrs.get("transB", 0):
        w = w.T
    bias = None
    if len(gemm.input) > 2 and gemm.input[2]:
        bias = _constant(model, gemm.input[2], producer)
        if bias is None:
            raise UserInputError(f"{gemm.name}: the bias is not a constant")
        bias = bias * float(attrs.get("beta", 1.0))
    return np.ascontiguousarray(w), bias


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _clamps_at_zero(model: onnx.ModelProto, q: onnx.NodeProto) -> bool:
    """Whether QuantizeLinear ``q`` clamps at 0 (zero point at its type's minimum: UINT8 0, INT8 -128): an
    asymmetric ``ort``-placement pair after a ReLU that ONNX Runtime's quantizer removed into it. Taking the pair
    away must put the ReLU back."""
    inits = {i.name: i for i in model.graph.initializer}
    if len(q.input) < 3 or q.input[2] not in inits:
        return False
    zp = numpy_helper.to_array(inits[q.input[2]])
    lowest = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}.get(zp.dtype)
    return lowest is not None and bool(np.all(zp == lowest))


def _to_float_matmul(model: onnx.ModelProto, node_name: str) -> str:
    """Replace Gemm ``node_name`` by MatMul(+Add) on float weights, without activation Q/DQ around it.
    Returns the MatMul's name."""
    g = model.graph
    producer = producers(g)
    consumers = consumers_of(g)
    gemm = next(n for n in g.node if n.name == node_name)
    w, bias = _gemm_weights(model, gemm, producer)
    base = node_name.rsplit("/", 1)[0] if "/" in node_name else node_name
    new: list[onnx.NodeProto] = []
    a = gemm.input[0]
    dq = producer.get(a)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producer.get(dq.input[0])
        # weight-only: the float activation, not its INT8 round trip; but a pair that clamps at 0 is also the
        # ReLU ONNX Runtime folded into it: it stays (the layer before still writes INT8, e.g. a QGemm)
        if q is not None and q.op_type == "QuantizeLinear" and not _clamps_at_zero(model, q):
            a = q.input[0]
    out = gemm.output[0]
    relu_after = False
    graph_outputs = {o.name for o in g.output}
    nxt = consumers.get(out, [])
    if out not in graph_outputs and len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
        q_out = consumers.get(nxt[0].output[0], [])
        if len(q_out) == 1 and q_out[0].op_type == "DequantizeLinear":
            out = q_out[0].output[0]  # the Q/DQ after the layer goes too (the logits stay float)
            relu_after = _clamps_at_zero(model, nxt[0])
    w_name, b_name = f"{base}/weight_kn", f"{base}/bias"
    g.initializer.append(numpy_helper.from_array(w, w_name))
    mm_name = f"{base}/MatMul"
    final = f"{base}/Relu_input_0" if relu_after else out
    mm_out = final if bias is None else f"{base}/MatMul_output_0"
    new.append(onnx.helper.make_node("MatMul", [a, w_name], [mm_out], name=mm_name))
    if bias is not None:
        g.initializer.append(numpy_helper.from_array(bias, b_name))
        new.append(onnx.helper.make_node("Add", [mm_out, b_name], [final], name=f"{base}/Add"))
    if relu_after:
        new.append(onnx.helper.make_node("Relu", [final], [out], name=f"{base}/Relu"))
    # the replaced node's output may be re-produced further down (out = DQ output): drop that producer first
    if out != gemm.output[0]:
        g.node.remove(producer[out])
    idx = list(g.node).index(gemm)
    g.node.remove(gemm)
    for k, n in enumerate(new):
        g.node.insert(idx + k, n)
    return mm_name


def _fuse_bias(model: onnx.ModelProto) -> None:
    """MatMulNBits -> Add(constant [N]) becomes one MatMulNBits with its optional bias input (index 5)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    consumers = consumers_of(g)
    graph_outputs = {o.name for o in g.output}
    for n in list(g.node):
        if n.op_type != "MatMulNBits" or n.output[0] in graph_outputs:
            continue
        nxt = consumers.get(n.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Add":
            continue
        add = nxt[0]
        other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
        if other not in inits:
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        del n.input[:]
        n.input.extend(ins[:5] + [other])
        n.output[0] = add.output[0]
        g.node.remove(add)


def to_int4(int8: onnx.ModelProto, cfg: Int4Config) -> onnx.ModelProto:
    """The INT8 QDQ model with its FC layers (except ``cfg.keep_int8``) as INT4 weight-only layers."""
    cfg.validate()
    from alexnet_deploy.deps import require

    require("onnxruntime.quantization", "INT4 weight-only quantization")
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.ModelProto()
    model.CopyFrom(int8)
    layers = fc_layers(model)
    unknown = [m for m in cfg.keep_int8 if m not in layers]
    if unknown:
        raise UserInputError(f"cannot keep {unknown} in INT8: not a fully-connected layer (have {', '.join(layers)})")
    if any(n.op_type == "MatMul" for n in model.graph.node):
        raise UserInputError("the INT8 model already has MatMul nodes; give the QDQ model alexnet-calibrate wrote")
    problem = tensorrt_qdq_problem(model) if cfg.form == "trt" else None
    if problem:
        raise UserInputError(f"the trt form is for TensorRT, but the INT8 model was calibrated for ONNX Runtime "
                             f"({problem}); calibrate its convolutions with --placement tensorrt")
    targets = [_to_float_matmul(model, node) for m, node in layers.items() if m not in cfg.keep_int8]
    _prune(model.graph)
    if not targets:
        return model
    quant = MatMulNBitsQuantizer(
        model, bits=4, block_size=cfg.block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
        nodes_to_include=targets, op_types_to_quantize=("MatMul",),
        quant_format=QuantFormat.QOperator if cfg.form == "ort" else QuantFormat.QDQ)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every node, and the opset bump, at WARNING/INFO
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant.process()
    finally:
        root.setLevel(level)
    out = quant.model.model
    left = [n.name for n in out.graph.node if n.op_type == "MatMul" and n.name in targets]
    if left:
        raise UserInputError(f"onnxruntime could not quantize {left} to INT4")
    if cfg.form == "ort":
        _fuse_bias(out)
        # an INT8 FC layer whose output Q/DQ the next (INT4) layer bypassed writes float: INT32 bias, still QGemm
        quantize_float_output_bias(out)
    _prune(out.graph)
    return out


def _bytes_saved(int8: onnx.ModelProto, layer: str) -> int:
    """Bytes INT4 saves on ``layer`` against its INT8 weights (about half; scales not counted)."""
    node = next(n for n in int8.graph.node if n.name == fc_layers(int8)[layer])
    inits = {i.name: i for i in int8.graph.initializer}
    w = behind_dequantize(node.input[1], producers(int8.graph))
    if w not in inits:
        return 0
    n = int(np.prod(inits[w].dims))
    return initializer_bytes(inits[w]) - (n + 1) // 2


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers as stored (INT4 counts half a byte per element)."""
    return sum(initializer_bytes(i) for i in model.graph.initializer)


def provenance(fp32_path: Path, int8_path: Path, int8_meta, cfg: Int4Config, fc: list[str],
               eval_set=None) -> dict:
    """What made this model: method, bits, block size, form, which layers, and the INT8 calibration it
    builds on (with that calibration's data fingerprint)."""
    conv = int8_meta.extra.get("calibration") or {}
    return {
        "method": METHOD, "bits": 4, "block_size": cfg.block_size, "symmetric": True,
        "accuracy_level": ACCURACY_LEVEL if cfg.form == "ort" else None, "form": cfg.form,
        "tool": "onnxruntime.quantization.MatMulNBitsQuantizer",
        "layers_int4": [m for m in fc if m not in cfg.keep_int8], "layers_int8": list(cfg.keep_int8),
        "activations": "float (weight-only)",
        "source_onnx_sha256": sha256_file(fp32_path), "int8_onnx_sha256": sha256_file(int8_path),
        "conv_calibration": {k: conv.get(k) for k in ("method", "dataset", "num_images", "data_sha256")},
        "data_sha256": conv.get("data_sha256"),
        **({"evaluation": eval_set.provenance()} if eval_set is not None else {}),
    }


@dataclass
class Int4Result:
    output: Path
    chosen: dict
    int8: dict
    sensitivity: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    weight_bytes: int = 0


def quantize_fc(fp32_path: str | Path, int8_path: str | Path, output: str | Path, *, block_size: int = DEFAULT_BLOCK_SIZE,
                form: str = "ort", dataset: str = "digits", eval_images: int = 1000, max_drop: float | None = None,
                sensitivity: bool = False, allow_synthetic: bool = False, echo=print) -> Int4Result:
    """FP32 ONNX + its INT8 QDQ calibration -> INT8-conv + INT4-FC ONNX at ``output`` (atomically), with a
    held-out comparison against FP32 (and INT8), per-layer sensitivity and the ``max_drop`` budget."""
    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.qdq import temp_dir
    from alexnet_deploy.calibration.evaluate import Evaluator
    from alexnet_deploy.fileio import atomic_path, check_writable
    from alexnet_deploy.runtime.metadata import read_onnx_metadata, set_metadata

    fp32_path, int8_path, output = Path(fp32_path), Path(int8_path), check_writable(output)
    cfg = Int4Config(block_size, form)
    cfg.validate()
    if output.resolve() in (fp32_path.resolve(), int8_path.resolve()):
        raise UserInputError("the INT4 output would overwrite one of its inputs; choose another --output")
    meta, int8_meta = read_onnx_metadata(fp32_path), read_onnx_metadata(int8_path)
    int8 = onnx.load(str(int8_path))
    layers = list(fc_layers(int8))
    if not layers:
        raise UserInputError(f"{int8_path.name} has no fully-connected (Gemm) layers to put in INT4")
    held = load_calibration_set(dataset, meta, eval_images, "heldout", allow_synthetic)
    evaluate = Evaluator(fp32_path, meta, held)
    base = evaluate(int8_path, "int8", [])
    echo(f"INT4 FC ({form}, block {block_size}) on {held.name}: {len(held.x)} held-out images; "
         f"INT8 drop {base.drop:+.2f} pts")
    with temp_dir(output.parent) as tmp:
        tmp = Path(tmp)

        def build(keep: list[str], tag: str):
            path = tmp / f"{tag}.onnx"
            onnx.save(to_int4(int8, dataclasses.replace(cfg, keep_int8=keep)), str(path))
            return path, evaluate(path, "int4-fc", keep)

        path, ev = build([], "all")
        echo(f"  all FC in INT4: drop {ev.drop:+.2f} pts, top-1 agreement {ev.agreement:.2%}")
        sens: list[dict] = []
        if sensitivity or needs_search(ev, max_drop):
            for layer in layers:
                _, e = build([m for m in layers if m != layer], f"only-{layer}")
                sens.append({"layer": layer, "cost_pct": e.drop - base.drop, "drop_pct": e.drop,
                             "weight_bytes_saved": _bytes_saved(int8, layer),
                             "top1_agreement": e.agreement, "output_error": e.error,
                             "extra_error": e.error - base.error})
                echo(f"  only {layer} in INT4: costs {e.drop - base.drop:+.2f} pts, output error {e.error:.4f}")
            sens.sort(key=lambda r: (-r["cost_pct"], -r["extra_error"]))
        keep: list[str] = []
        if needs_search(ev, max_drop):  # worst first; keeping them all is plain INT8 (said below)
            keep, path, ev = keep_until_within([r["layer"] for r in sens], lambda k: build(k, f"keep{len(k)}"),
                                               max_drop, (path, ev), "INT8", echo)
            if ev.drop > max_drop:
                echo(f"warning: with {', '.join(keep)} in INT8 the drop is still {ev.drop:.2f} > {max_drop} points")
            if len(keep) == len(layers):
                echo("warning: no FC layer fits the budget in INT4; the output is the INT8 model")
        cfg.keep_int8 = keep
        q = onnx.load(str(path))
        prov = provenance(fp32_path, int8_path, int8_meta, cfg, layers, held)
        chosen = _row(ev) | {"dataset": held.name, "images": int(len(held.x)), "kept_int8": keep}
        out_meta = dataclasses.replace(
            int8_meta, extra={**int8_meta.extra, "weights_fc": {"bits": 4, "block_size": block_size, "form": form,
                                                                "layers_int4": prov["layers_int4"]},
                              "int4_quantization": prov, "int4_evaluation": chosen})
        set_metadata(q, out_meta)
        with atomic_path(output) as final:
            onnx.save(q, str(final))
    return Int4Result(output, chosen, _row(base), sens, prov, weight_bytes(q))


def _row(ev) -> dict:
    """An evaluation as JSON (units in the names: percent / points, fractions)."""
    return {"fp32_accuracy_pct": ev.fp32_accuracy, "accuracy_pct": ev.int8_accuracy, "drop_pct": ev.drop,
            "top1_agreement": ev.agreement, "relative_output_error": ev.error}


def summary_table(result: Int4Result) -> str:
    c, b = result.chosen, result.int8
    lines = [f"{'model':<16}{'accuracy':>10}{'drop':>8}{'top-1 agree':>13}",
             f"{'FP32':<16}{_pct(b['fp32_accuracy_pct'])}",
             f"{'INT8 QDQ':<16}{_pct(b['accuracy_pct'])}{b['drop_pct']:8.2f}{b['top1_agreement']:12.2%}",
             f"{'INT8+INT4 FC':<16}{_pct(c['accuracy_pct'])}{c['drop_pct']:8.2f}{c['top1_agreement']:12.2%}"]
    if result.sensitivity:
        lines.append("FC sensitivity (cost in points when only that layer is INT4):")
        lines += [f"  {r['layer']:<14} {r['cost_pct']:+.2f}  (output error {r['output_error']:.4f}, "
                  f"saves {r['weight_bytes_saved'] / 1e6:.1f} MB)"
                  for r in result.sensitivity]
    lines.append(f"INT4 layers: {', '.join(result.provenance['layers_int4']) or 'none'}; kept INT8: "
                 f"{', '.join(c['kept_int8']) or 'none'}; weights {result.weight_bytes / 1e6:.1f} MB -> "
                 f"{result.output} (sha256 {sha256_file(result.output)[:12]})")
    return "\n".join(lines)


def _pct(v) -> str:
    return f"{v:9.2f}%" if v is not None else f"{'-':>10}"


class FcStage:
    """``alexnet-calibrate --weights-fc``: ``int8`` leaves the calibrated model as it is; ``int4`` writes the
    INT8 QDQ model to a temporary next to the output, then the INT8-conv + INT4-FC model to the output::

        with FcStage("int4", output, 128, "ort") as fc:
            result = calibrate(model, fc.int8_output, ...)
            int4 = fc.finish(model, dataset=..., eval_images=..., max_drop=..., echo=...)
    """

    def __init__(self, weights_fc: str, output: str | Path, block_size: int = DEFAULT_BLOCK_SIZE, form: str = "ort"):
        if weights_fc not in ("int8", "int4"):
            raise UserInputError(f"--weights-fc must be int8 or int4, got {weights_fc!r}")
        self.int4, self.output = weights_fc == "int4", Path(output)
        self.block_size, self.form = block_size, form
        if self.int4:
            Int4Config(block_size, form).validate()  # before any calibration work
        self.int8_output = self.output
        self.result: Int4Result | None = None
        self._tmp = None

    def __enter__(self) -> "FcStage":
        if self.int4:
            from alexnet_deploy.calibration.qdq import temp_dir
            from alexnet_deploy.fileio import check_writable

            check_writable(self.output)
            self._tmp = temp_dir(self.output.parent)
            self.int8_output = Path(self._tmp.name) / f"{self.output.stem}.int8.onnx"
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def finish(self, fp32_model: str | Path, **kwargs) -> Int4Result | None:
        if not self.int4:
            return None
        self.result = quantize_fc(fp32_model, self.int8_output, self.output, block_size=self.block_size,
                                  form=self.form, **kwargs)
        return self.result

    def json(self) -> dict:
        r = self.result
        if r is None:
            return {}
        return {"output": str(r.output), "int4": {"chosen": r.chosen, "int8": r.int8, "sensitivity": r.sensitivity,
                                                  "weight_bytes": r.weight_bytes, "provenance": r.provenance}}
