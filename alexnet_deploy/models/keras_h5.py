"""Keras models (``.keras``, ``.h5``, ``.weights.h5``) read with h5py alone (no TensorFlow, no Keras), matched
onto a registered variant by their layer list and turned into that variant's PyTorch state_dict.

What a port must get right, each of which, left out, gives a wrong model:

- Conv kernels are stored (kh, kw, in, out) in every Keras data format -> PyTorch (out, in, kh, kw); Dense
  kernels are (in, out) -> transposed.
- The first Dense after Flatten sees Keras' flatten order (H, W, C for channels_last), PyTorch's is (C, H, W):
  its input rows are permuted.
- BatchNormalization's epsilon (Keras 1e-3, PyTorch 1e-5) is folded into gamma (in float64), so the state_dict
  alone (checkpoints included) carries the exact Keras math.
- A final softmax (``Dense(..., activation="softmax")`` or a Softmax layer) is carried as the model's softmax
  output (``output_kind = probabilities``), never dropped silently.
- ``Rescaling`` / ``Normalization`` layers at the start become the model's preprocessing (mean/std on 0..1
  pixels), so the graph and every runtime feed it exactly what Keras computed from 0..255 pixels.

File layouts: a ``.keras`` zip holds ``config.json`` and ``model.weights.h5`` (``layers/<name>/vars/<i>``);
a legacy full-model ``.h5`` holds ``model_config`` (attribute) and ``model_weights/<layer>/<weight_names>``;
a ``.weights.h5`` (``model.save_weights``) holds only the weights: the layer order is then the order Keras
wrote them (their HDF5 object addresses) and every shape is checked along the chain.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import ModelLoadError, UserInputError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # ``.weights.h5`` ends in .h5 too
LABEL_FILES = ("{stem}.labels.txt", "{stem}_labels.txt", "labels.txt")
BN_TORCH_EPS = 1e-5
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): Normalization divides by max(sqrt(variance), this)
# Layers that do nothing at inference
_NO_OPS = {"Dropout", "SpatialDropout2D", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
           "ActivityRegularization", "InputLayer",
           # augmentation: the identity at inference (RandomCrop is not: it center-crops, so it stays a mismatch)
           "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness"}


def is_keras_file(path) -> bool:
    return str(path).lower().endswith(KERAS_SUFFIXES)


def _weights_stem(path: Path) -> str:
    name = path.name
    for suffix in (".weights.h5", ".keras", ".h5", ".hdf5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --------------------------------------------------------------------------------------------- reading


@dataclass
class KLayer:
    """One top-level Keras layer: its position, name, class, config and weights (in Keras' own order)."""

    index: int
    name: str
    cls: str
    config: dict
    weights: list = field(default_factory=list)

    def describe(self) -> str:
        c = self.config
        if self.cls == "Conv2D":
            k, s = _pair(c.get("kernel_size", 1)), _pair(c.get("strides", 1))
            return (f"Conv2D({c.get('filters')}, {k[0]}x{k[1]}, strides {s[0] if s[0] == s[1] else s}, "
                    f"{c.get('padding', 'valid')}, {c.get('activation', 'linear')})")
        if self.cls == "Dense":
            return f"Dense({c.get('units')}, {c.get('activation', 'linear')})"
        if self.cls in ("MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D"):
            p, s = _pair(c.get("pool_size", 2)), _pair(c.get("strides") or c.get("pool_size", 2))
            return f"{self.cls}({p[0]}x{p[1]}, strides {s[0] if s[0] == s[1] else s}, {c.get('padding', 'valid')})"
        if self.cls == "BatchNormalization":
            return f"BatchNormalization(epsilon {c.get('epsilon', 1e-3)})"
        if self.cls == "Activation":
            return f"Activation({c.get('activation')})"
        return self.cls

    def where(self) -> str:
        return f"layer {self.index} {self.name!r} {self.describe()}"


@dataclass
class KerasFile:
    path: Path
    layers: list[KLayer]
    input_shape: tuple | None  # without the batch dimension, as Keras has it
    form: str  # keras | h5 | weights.h5
    keras_version: str = ""
    has_config: bool = True


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1] if len(v) > 1 else v[0]))
    return (int(v), int(v))


def _h5py():
    from alexnet_deploy.deps import require

    return require("h5py", "reading Keras .keras / .h5 files")


def _open_h5(source, path: Path):
    h5py = _h5py()
    try:
        return h5py.File(source, "r")
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} as HDF5 ({str(exc).splitlines()[0][:160]}); expected a Keras "
                             ".keras, .h5 or .weights.h5 file") from None


def _config_layers(config: dict, path: Path) -> tuple[list[tuple[str, str, dict]], tuple | None]:
    """(name, class, config) of every top-level layer in order, and the input shape, from a model config."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(f"{path} has no Keras model config (config.json / model_config)")
    cls = config["class_name"]
    body = config.get("config") or {}
    if cls not in ("Sequential", "Functional", "Model"):
        raise ModelLoadError(f"{path} holds a Keras {cls}, not a Sequential or Functional model; rebuild it as one")
    raw = body.get("layers")
    if not isinstance(raw, list):
        raise ModelLoadError(f"{path}: the Keras model config lists no layers")
    out, input_shape = [], None
    prev = None
    for i, layer in enumerate(raw):
        lc = layer.get("config") or {}
        name, lcls = str(lc.get("name") or layer.get("name") or f"layer_{i}"), str(layer.get("class_name"))
        if cls != "Sequential" and prev is not None:  # a Functional model must be a chain to be one of ours
            nodes = layer.get("inbound_nodes") or []
            if lcls != "InputLayer" and _inbound(nodes) != [prev]:
                raise ModelLoadError(f"{path}: layer {name!r} ({lcls}) takes {_inbound(nodes) or 'no'} as input, not "
                                     f"the previous layer {prev!r}; only a chain of layers maps onto a variant")
        prev = name
        shape = lc.get("batch_shape") or lc.get("batch_input_shape")
        if shape and input_shape is None:
            input_shape = tuple(shape[1:])
        out.append((name, lcls, lc))
    return out, input_shape


def _inbound(nodes) -> list[str]:
    """Names of the layers feeding a Functional layer (Keras 3 ``args`` form and Keras 2 list form)."""
    names = []
    for node in nodes:
        if isinstance(node, dict):  # keras 3: {"args": [{"class_name": "__keras_tensor__", "config": {...}}]}
            stack = list(node.get("args", []))
            while stack:
                a = stack.pop(0)
                if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
                    names.append(a["config"]["keras_history"][0])
                elif isinstance(a, (list, tuple)):
                    stack = list(a) + stack
        elif isinstance(node, list):  # keras 2: [[name, node_index, tensor_index, kwargs], ...]
            names += [n[0] for n in node if isinstance(n, list) and n]
    return names


def _snake(name: str) -> str:
    """keras.src.utils.naming.to_snake_case."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _store_names(specs: list[tuple[str, str, dict]], sequential: bool) -> dict[str, str]:
    """Layer name -> its group in a Keras 3 weight store. Keras addresses layers there by class, not by name
    (``conv2d``, ``conv2d_1``, ... in ``model.layers`` order; a Sequential's InputLayer is not in that list)."""
    used: dict[str, int] = {}
    out = {}
    for name, cls, _ in specs:
        if sequential and cls == "InputLayer":
            continue
        base = _snake(cls)
        if base in used:
            used[base] += 1
            out[name] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            out[name] = base
    return out


def _vars_v3(group) -> dict[str, list[np.ndarray]]:
    """Keras 3 weight store: ``layers/<name>/vars/<i>`` -> {name: [arrays in order]} (nested layers ignored)."""
    out = {}
    layers = group.get("layers")
    if layers is None:
        return out
    for name in layers:
        vars_ = layers[name].get("vars")
        if vars_ is None:
            continue
        out[name] = [np.asarray(vars_[k]) for k in sorted(vars_, key=int)]
    return out


def _v3_write_order(group) -> list[str]:
    """Layer names in the order Keras wrote them (the HDF5 address of their first variable, else the group's)."""
    h5py = _h5py()
    layers = group["layers"]

    def addr(name):
        vars_ = layers[name].get("vars")
        keys = sorted(vars_, key=int) if vars_ is not None else []
        obj = vars_[keys[0]] if keys else layers[name]
        return h5py.h5o.get_info(obj.id).addr

    return sorted(layers, key=addr)


def _read_legacy_weights(g, path: Path) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("layer_names", [])]
    weights = {}
    for name in names:
        if name not in g:
            raise ModelLoadError(f"{path}: layer {name!r} is listed but has no weights group")
        lg = g[name]
        wn = [w.decode() if isinstance(w, bytes) else str(w) for w in lg.attrs.get("weight_names", [])]
        try:
            weights[name] = [np.asarray(lg[w]) for w in wn]
        except KeyError as exc:
            raise ModelLoadError(f"{path}: weight {exc} of layer {name!r} is missing") from None
    return names, weights


def read_keras_file(path: str | os.PathLike) -> KerasFile:
    """The layer list (with weights) of a Keras file; one-line :class:`ModelLoadError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        return _read_keras_zip(path)
    h5py = _h5py()
    if not h5py.is_hdf5(str(path)):
        raise ModelLoadError(f"{path} is neither a Keras .keras zip nor an HDF5 file (.h5 / .weights.h5)")
    with _open_h5(str(path), path) as f:
        if "model_config" in f.attrs:  # legacy full model (.h5)
            raw = f.attrs["model_config"]
            try:
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            except (ValueError, UnicodeDecodeError):
                raise ModelLoadError(f"{path}: its model_config attribute is not JSON") from None
            specs, input_shape = _config_layers(config, path)
            g = f.get("model_weights")
            if g is None or not len(g.attrs.get("layer_names", [])):
                raise ModelLoadError(f"{path} holds a Keras model config but no weights (saved with "
                                     "include_weights off, or truncated); save the trained model again")
            names, weights = _read_legacy_weights(g, path)
            version = _attr_str(f.attrs.get("keras_version") or g.attrs.get("keras_version"))
            return _assemble(path, specs, weights, input_shape, "h5", version)
        if "layers" in f and isinstance(f["layers"], h5py.Group):  # keras 3 .weights.h5
            order = _v3_write_order(f)
            weights = _vars_v3(f)
            specs = [(n, None, {}) for n in order]
            return _assemble(path, specs, weights, None, "weights.h5", "", has_config=False)
        if "layer_names" in f.attrs:  # keras 2 save_weights(.h5)
            names, weights = _read_legacy_weights(f, path)
            specs = [(n, None, {}) for n in names]
            return _assemble(path, specs, weights, None, "weights.h5", _attr_str(f.attrs.get("keras_version")),
                             has_config=False)
    raise ModelLoadError(f"{path} is an HDF5 file but not a Keras model or weights file (no model_config, "
                         "layer_names or layers/ group)")


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else "")


def _read_keras_zip(path: Path) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"{path} is a zip but not a .keras model (no config.json)")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            if "model.weights.h5" not in names:
                raise ModelLoadError(f"{path} holds a Keras model config but no weights (model.weights.h5); "
                                     "save the trained model again")
            data = z.read("model.weights.h5")
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path} as a .keras file: {str(exc).splitlines()[0][:160]}") from None
    specs, input_shape = _config_layers(config, path)
    with _open_h5(io.BytesIO(data), path) as f:
        stored = _vars_v3(f)
    keys = _store_names(specs, config.get("class_name") == "Sequential")
    weights = {name: stored.get(keys.get(name, name), []) for name, _, _ in specs}
    return _assemble(path, specs, weights, input_shape, "keras", str(meta.get("keras_version", "")))


def _assemble(path, specs, weights, input_shape, form, version, has_config=True) -> KerasFile:
    if not any(len(w) for w in weights.values()):
        raise ModelLoadError(f"{path} holds no weights (every layer is empty); save the trained model again")
    layers = []
    for i, (name, cls, cfg) in enumerate(specs):
        if cls is None:  # weights only: the kind from the shapes
            cls, cfg = _kind_from_weights(weights.get(name, []), name, path)
        layers.append(KLayer(i, name, cls, cfg, list(weights.get(name, []))))
    return KerasFile(Path(path), layers, input_shape, form, version, has_config)


def _kind_from_weights(ws: list, name: str, path) -> tuple[str, dict]:
    shapes = [tuple(w.shape) for w in ws]
    if not ws:
        return "Weightless", {}
    if len(shapes[0]) == 4:
        return "Conv2D", {"filters": shapes[0][3], "kernel_size": list(shapes[0][:2]), "use_bias": len(ws) > 1,
                          "_weights_only": True}
    if len(shapes[0]) == 2:
        return "Dense", {"units": shapes[0][1], "use_bias": len(ws) > 1, "_weights_only": True}
    if len(ws) == 4 and all(len(s) == 1 and s == shapes[0] for s in shapes):
        return "BatchNormalization", {"_weights_only": True}
    raise ModelLoadError(f"{path}: cannot tell what layer {name!r} is from its weights {shapes} (a .weights.h5 has "
                         "no layer list); use the .keras file")


# --------------------------------------------------------------------------------------------- matching


@dataclass
class Op:
    """One step of the forward pass in a form both frameworks share."""

    kind: str  # conv | relu | bn | maxpool | flatten | linear | softmax | other
    params: tuple = ()
    ref: object = None  # KLayer, or the torch module's qualified name
    label: str = ""

    def same(self, other: "Op") -> bool:
        return self.kind == other.kind and (self.params == other.params or "*" in (self.params, other.params))


def _torch_ops(model) -> list[Op]:
    from torch import nn

    from alexnet_deploy.models.alexnet import execution_order as _execution_order

    ops = []
    for name, m in _execution_order(model):
        if isinstance(m, nn.Conv2d):
            p = m.padding if isinstance(m.padding, tuple) else _pair(m.padding)
            ops.append(Op("conv", (m.out_channels, *m.kernel_size, *m.stride, *p, m.groups, *m.dilation), name,
                          f"Conv2d({m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}, stride {m.stride[0]}, "
                          f"padding {p[0]}{', groups ' + str(m.groups) if m.groups > 1 else ''})"))
        elif isinstance(m, nn.ReLU):
            ops.append(Op("relu", (), name, "ReLU"))
        elif isinstance(m, nn.BatchNorm2d):
            ops.append(Op("bn", (m.num_features,), name, f"BatchNorm2d({m.num_features})"))
        elif isinstance(m, nn.MaxPool2d):
            k, s = _pair(m.kernel_size), _pair(m.stride)
            ops.append(Op("maxpool", (*k, *s, *_pair(m.padding)), name, f"MaxPool2d({k[0]}, {s[0]})"))
        elif isinstance(m, nn.Flatten):
            ops.append(Op("flatten", (), name, "Flatten"))
        elif isinstance(m, nn.Linear):
            ops.append(Op("linear", (m.out_features,), name, f"Linear({m.out_features})"))
        elif isinstance(m, nn.Dropout):
            continue
        else:
            ops.append(Op("other", (type(m).__name__,), name, type(m).__name__))
    return ops


@dataclass
class _Prep:
    scale: np.ndarray  # y = x * scale + offset, per channel, on 0..255 pixels
    offset: np.ndarray
    layers: list = field(default_factory=list)


def _activation_ops(act, layer: KLayer) -> list[Op]:
    if isinstance(act, dict):  # a serialized activation object: its registered name
        act = (act.get("config") or {}).get("name") or act.get("class_name")
    act = str(act or "linear").lower()
    if act == "linear":
        return []
    if act == "relu":
        return [Op("relu", (), layer, layer.where())]
    if act == "softmax":
        return [Op("softmax", (), layer, layer.where())]
    return [Op("other", (f"activation {act}",), layer, layer.where())]


def _keras_ops(kf: KerasFile) -> tuple[list[Op], _Prep | None, str]:
    """The Keras layers as ops, the preprocessing layers folded into one affine map, and the data format."""
    ops: list[Op] = []
    prep: _Prep | None = None
    fmt = None
    pending_pad = None  # (layer, (pad_h, pad_w)) of a ZeroPadding2D waiting for its Conv2D
    for layer in kf.layers:
        c, cls = layer.config, layer.cls
        if cls in _NO_OPS or cls == "Weightless":
            continue
        if cls in ("Rescaling", "Normalization"):
            if ops:
                ops.append(Op("other", (cls,), layer, layer.where() + " (preprocessing layers must come first)"))
                continue
            prep = _fold_prep(prep, layer, kf.path)
            continue
        if cls == "ZeroPadding2D":  # + Conv2D(valid): PyTorch's padded convolution
            pd = c.get("padding", 1)
            pd = [_pair(v) for v in pd] if isinstance(pd, (list, tuple)) and isinstance(pd[0], (list, tuple)) \
                else [(v, v) for v in _pair(pd)]
            if pd[0][0] != pd[0][1] or pd[1][0] != pd[1][1] or pending_pad is not None:
                ops.append(Op("other", ("asymmetric padding",), layer, layer.where()))
            else:
                pending_pad = (layer, (pd[0][0], pd[1][0]))
            continue
        if pending_pad is not None and cls != "Conv2D":
            ops.append(Op("other", ("ZeroPadding2D",), pending_pad[0], pending_pad[0].where()))
            pending_pad = None
        if cls == "Conv2D":
            f = c.get("data_format") or "channels_last"
            fmt = fmt or f
            if f != fmt:
                ops.append(Op("other", (f"data_format {f}",), layer, layer.where() + f" ({f} after {fmt})"))
                continue
            k, s, d = _pair(c.get("kernel_size", 1)), _pair(c.get("strides", 1)), _pair(c.get("dilation_rate", 1))
            pad = str(c.get("padding", "valid")).lower()
            if c.get("_weights_only"):
                params = "*"  # no config: strides and padding unknown; the shape chain is checked when mapping
            elif pad == "valid":
                extra = pending_pad[1] if pending_pad is not None else (0, 0)
                params = (int(c["filters"]), *k, *s, *extra, int(c.get("groups", 1)), *d)
            elif pad == "same" and s == (1, 1) and k[0] % 2 and k[1] % 2:
                params = (int(c["filters"]), *k, *s, (k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1],
                          int(c.get("groups", 1)), *d)
            else:  # strided or even-kernel "same": Keras pads asymmetrically, which no variant does
                params = (int(c["filters"]), *k, *s, f"same (asymmetric)")
            if pending_pad is not None and pad != "valid":
                params = (int(c["filters"]), *k, *s, "ZeroPadding2D before a padded Conv2D")
            pending_pad = None
            ops.append(Op("conv", params, layer, layer.where()))
            ops += _activation_ops(c.get("activation"), layer)
        elif cls == "Dense":
            ops.append(Op("linear", "*" if c.get("_weights_only") else (int(c["units"]),), layer, layer.where()))
            ops += _activation_ops(c.get("activation"), layer)
        elif cls == "BatchNormalization":
            ops.append(Op("bn", "*", layer, layer.where()))
        elif cls in ("MaxPooling2D", "MaxPool2D"):
            p = _pair(c.get("pool_size", 2))
            s = _pair(c.get("strides") or p)
            pad = str(c.get("padding", "valid")).lower()
            ops.append(Op("maxpool", (*p, *s, 0, 0) if pad == "valid" else (*p, *s, pad), layer, layer.where()))
        elif cls == "Flatten":
            ops.append(Op("flatten", (), layer, layer.where()))
        elif cls == "Activation":
            ops += _activation_ops(c.get("activation"), layer) or []
        elif cls == "ReLU":
            plain = not c.get("max_value") and not c.get("negative_slope") and not c.get("threshold")
            ops.append(Op("relu" if plain else "other", () if plain else ("ReLU with options",), layer, layer.where()))
        elif cls == "Softmax":
            ops.append(Op("softmax", (), layer, layer.where()))
        else:
            ops.append(Op("other", (cls,), layer, layer.where()))
    return ops, prep, fmt or "channels_last"


def _channels(v, what: str, path) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise ModelLoadError(f"{path}: {what} has {a.size} values; expected 1 or 3 (one per RGB channel)")
    return a


def _fold_prep(prep: _Prep | None, layer: KLayer, path) -> _Prep:
    prep = prep or _Prep(np.ones(3), np.zeros(3))
    c = layer.config
    if layer.cls == "Rescaling":
        s, o = _channels(c.get("scale", 1.0), "Rescaling scale", path), _channels(c.get("offset", 0.0),
                                                                                  "Rescaling offset", path)
    else:
        if c.get("invert"):
            raise ModelLoadError(f"{path}: {layer.where()} has invert=True (a de-normalization); not an input layer")
        if c.get("mean") is not None:
            mean, var = c["mean"], c["variance"]
        elif len(layer.weights) >= 2:
            mean, var = layer.weights[0], layer.weights[1]
        else:
            raise ModelLoadError(f"{path}: {layer.where()} has neither mean/variance in its config nor adapted weights")
        mean, var = _channels(mean, "Normalization mean", path), _channels(var, "Normalization variance", path)
        sd = np.maximum(np.sqrt(var), KERAS_EPSILON)
        s, o = 1.0 / sd, -mean / sd
    prep.scale, prep.offset = prep.scale * s, prep.offset * s + o
    prep.layers.append(layer.where())
    return prep


def prep_mean_std(prep: _Prep, path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """x * scale + offset on 0..255 pixels == (x/255 - mean) / std: std = 1/(255 scale), mean = -offset std."""
    if np.any(prep.scale <= 0):
        raise ModelLoadError(f"{path}: the preprocessing layers ({'; '.join(prep.layers)}) scale pixels by "
                             f"{prep.scale.tolist()}; only a positive scale is a normalization")
    std = 1.0 / (255.0 * prep.scale)
    mean = -prep.offset * std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass
class Match:
    variant: str
    pairs: list[tuple[Op, Op]]  # (keras op, torch op) for the ops that carry weights
    softmax: bool
    prep: _Prep | None
    data_format: str


def _compare(kops: list[Op], tops: list[Op]) -> tuple[int, str | None]:
    """(ops matched, why the next one differs or None when all match)."""
    for i in range(max(len(kops), len(tops))):
        if i >= len(kops):
            return i, f"the Keras model ends after {kops[-1].label if kops else 'no layers'}, where it has {tops[i].label}"
        if i >= len(tops):
            return i, f"the Keras model goes on with {kops[i].label} after the last layer ({tops[-1].label})"
        if not kops[i].same(tops[i]):
            return i, f"Keras {kops[i].label} where it has {tops[i].label}"
    return len(kops), None


def match_variant(kf: KerasFile, variant: str | None = None, num_classes: int | None = None) -> Match:
    """The registered variant whose layer list is the Keras model's (``variant``: only that one). One-line
    :class:`ModelLoadError` naming the first layer that differs (kind, shape, position) otherwise."""
    import torch

    from alexnet_deploy.models.alexnet import build_model
    from alexnet_deploy.models.specs import VARIANTS, get_variant

    kops, prep, fmt = _keras_ops(kf)
    softmax = bool(kops) and kops[-1].kind == "softmax"
    if softmax:
        kops = kops[:-1]
    n = num_classes or _keras_classes(kf)
    names = [variant] if variant else list(VARIANTS)
    if variant:
        get_variant(variant)
    best = None
    for name in names:
        with torch.device("meta"):
            model = build_model(name, num_classes=n, seed=None)
        tops = _torch_ops(model)
        if not kf.has_config:  # weights only: activations, pools and flatten are not recorded, compare the rest
            tops = [op for op in tops if op.kind in ("conv", "bn", "linear")]
        k, why = _compare(kops, tops)
        if why is None:
            spec = get_variant(name)
            size = _keras_input_size(kf, fmt)
            if size is not None and size != (spec.input_size, spec.input_size):
                why = (f"the Keras input is {size[0]}x{size[1]}, the variant takes "
                       f"{spec.input_size}x{spec.input_size}")
            else:
                pairs = [(a, b) for a, b in zip(kops, tops) if a.kind in ("conv", "bn", "linear")]
                return Match(name, pairs, softmax, prep, fmt)
        if best is None or k > best[0]:
            best = (k, name, why)
    k, name, why = best
    where = kf.path.name
    if variant:
        raise ModelLoadError(f"{where} does not match variant {name!r}: {why}")
    raise ModelLoadError(f"{where} matches no variant ({', '.join(VARIANTS)}); closest is {name!r} (first {k} "
                         f"steps agree): {why}")


def _keras_classes(kf: KerasFile) -> int | None:
    dense = [layer for layer in kf.layers if layer.cls == "Dense" and layer.weights]
    return int(dense[-1].weights[0].shape[1]) if dense else None


def _keras_input_size(kf: KerasFile, fmt: str) -> tuple[int, int] | None:
    s = kf.input_shape
    if not s or len(s) != 3 or any(v is None for v in s):
        return None
    if fmt == "channels_first":
        c, h, w = s
    else:
        h, w, c = s
    return (int(h), int(w)) if c == 3 else (-1, -1)


# --------------------------------------------------------------------------------------------- weights


def _flatten_perm(c: int, h: int, w: int, order: str) -> np.ndarray:
    """For each PyTorch (C, H, W) flatten index, the Keras flatten index holding the same activation."""
    idx = np.arange(c * h * w).reshape(c, h, w)  # torch position of (c, h, w)
    axes = {"c": 0, "h": 1, "w": 2}
    keras_layout = np.transpose(idx, [axes[a] for a in order])  # keras flattens in `order`
    keras_of_torch = np.empty(c * h * w, dtype=np.int64)
    keras_of_torch[keras_layout.reshape(-1)] = np.arange(c * h * w)
    return keras_of_torch


def _flatten_order(kf: KerasFile, fmt: str) -> str:
    flat = next((layer for layer in kf.layers if layer.cls == "Flatten"), None)
    ff = (flat.config.get("data_format") if flat is not None else None) or "channels_last"
    # Keras' Flatten(data_format="channels_first") moves axis 1 to the end before flattening
    if fmt == "channels_last":
        return "hwc" if ff == "channels_last" else "wch"
    return "chw" if ff == "channels_last" else "hwc"


def state_dict_from_match(kf: KerasFile, match: Match, model) -> dict:
    """The PyTorch state_dict of ``model`` (the matched variant, built for the right class count)."""
    import torch

    own = model.state_dict()
    state = {}
    order = _flatten_order(kf, match.data_format)
    prev_channels, first_linear = None, True
    conv_out_shape = _feature_shape(model, match.variant)

    def put(key, arr, what):
        want = tuple(own[key].shape)
        if tuple(arr.shape) != want:
            raise ModelLoadError(f"{kf.path.name}: {what} has shape {tuple(arr.shape)}, the variant's {key} needs {want}")
        if not np.all(np.isfinite(arr)):
            raise ModelLoadError(f"{kf.path.name}: {what} holds NaN or infinite values")
        state[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    for kop, top in match.pairs:
        layer: KLayer = kop.ref
        key, ws, c = top.ref, layer.weights, layer.config
        if top.kind == "conv":
            if not ws or ws[0].ndim != 4:
                raise ModelLoadError(f"{kf.path.name}: {layer.where()} has no 4-d kernel")
            if prev_channels is not None and ws[0].shape[2] != prev_channels:
                raise ModelLoadError(f"{kf.path.name}: {layer.where()} takes {ws[0].shape[2]} channels after "
                                     f"{prev_channels} (layer order of a .weights.h5?)")
            put(f"{key}.weight", np.transpose(ws[0], (3, 2, 0, 1)), f"{layer.where()} kernel")
            bias = ws[1] if c.get("use_bias", True) and len(ws) > 1 else np.zeros(ws[0].shape[3], np.float32)
            put(f"{key}.bias", bias, f"{layer.where()} bias")
            prev_channels = int(ws[0].shape[3])
        elif top.kind == "bn":
            gamma, beta, mean, var = _bn_arrays(layer, kf.path)
            if prev_channels is not None and gamma.shape[0] != prev_channels:
                raise ModelLoadError(f"{kf.path.name}: {layer.where()} normalizes {gamma.shape[0]} channels after "
                                     f"{prev_channels} (layer order of a .weights.h5?)")
            axis = c.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            if not c.get("_weights_only") and axis not in ((-1, 3) if match.data_format == "channels_last" else (1,)):
                raise ModelLoadError(f"{kf.path.name}: {layer.where()} normalizes axis {axis}, not the channels")
            eps = float(c.get("epsilon", 1e-3))
            g = gamma.astype(np.float64) * np.sqrt(var.astype(np.float64) + BN_TORCH_EPS) / np.sqrt(
                var.astype(np.float64) + eps)
            put(f"{key}.weight", g, f"{layer.where()} gamma")
            put(f"{key}.bias", beta, f"{layer.where()} beta")
            put(f"{key}.running_mean", mean, f"{layer.where()} moving_mean")
            put(f"{key}.running_var", var, f"{layer.where()} moving_variance")
            if f"{key}.num_batches_tracked" in own:
                state[f"{key}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif top.kind == "linear":
            if not ws or ws[0].ndim != 2:
                raise ModelLoadError(f"{kf.path.name}: {layer.where()} has no 2-d kernel")
            kernel = ws[0]
            if first_linear and conv_out_shape is not None:
                ch, h, w = conv_out_shape
                if kernel.shape[0] != ch * h * w:
                    raise ModelLoadError(f"{kf.path.name}: {layer.where()} takes {kernel.shape[0]} inputs, the "
                                         f"flattened {ch}x{h}x{w} feature map has {ch * h * w}")
                if order != "chw":
                    kernel = kernel[_flatten_perm(ch, h, w, order)]
            first_linear = False
            put(f"{key}.weight", kernel.T, f"{layer.where()} kernel")
            bias = ws[1] if c.get("use_bias", True) and len(ws) > 1 else np.zeros(ws[0].shape[1], np.float32)
            put(f"{key}.bias", bias, f"{layer.where()} bias")
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelLoadError(f"{kf.path.name}: no Keras weights for {', '.join(missing[:4])}")
    return state


def _bn_arrays(layer: KLayer, path) -> tuple[np.ndarray, ...]:
    c, ws = layer.config, list(layer.weights)
    scale, center = c.get("scale", True), c.get("center", True)
    want = 2 + int(bool(scale)) + int(bool(center))
    if len(ws) != want:
        raise ModelLoadError(f"{path.name}: {layer.where()} has {len(ws)} weight arrays, expected {want} "
                             f"(scale={scale}, center={center})")
    gamma = ws.pop(0) if scale else None
    beta = ws.pop(0) if center else None
    mean, var = ws
    gamma = gamma if gamma is not None else np.ones_like(mean)
    beta = beta if beta is not None else np.zeros_like(mean)
    return gamma, beta, mean, var


def _feature_shape(model, variant: str) -> tuple[int, int, int] | None:
    """(C, H, W) of the feature map that is flattened (shape arithmetic over the modules, no forward pass)."""
    from torch import nn

    from alexnet_deploy.models.alexnet import execution_order as _execution_order
    from alexnet_deploy.models.specs import get_variant

    size = get_variant(variant).input_size
    shape = (3, size, size)
    for _name, m in _execution_order(model):
        if isinstance(m, nn.Flatten):
            return shape
        if isinstance(m, nn.Conv2d):
            shape = (m.out_channels, *_conv_out(shape[1:], m.kernel_size, m.stride, m.padding, m.dilation))
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            shape = (shape[0], *_conv_out(shape[1:], k, s, p, (1, 1)))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            o = _pair(m.output_size)
            shape = (shape[0], *o)
    return None


def _conv_out(hw, k, s, p, d):
    k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
    return tuple((hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


# --------------------------------------------------------------------------------------------- loading


PREPROCESSING_FILE = ".preprocessing.json"  # NAME.preprocessing.json next to a Keras file without Rescaling layers


def preprocessing_unknown_message(path, options: bool = True) -> str:
    """One line asking for a Keras model's input normalization (``options``: the command takes --mean/--std)."""
    p = Path(path)
    ask = ("give --mean and --std as fed to Keras ((pixels/255 - mean) / std; --mean 0 --std 1 for pixels/255), or "
           if options else "add Rescaling/Normalization layers in Keras, or ")
    return (f"{p.name} has no Rescaling/Normalization layers, so what its input was is not in the file: {ask}write "
            f"{_weights_stem(p)}{PREPROCESSING_FILE} next to it: {{\"mean\": [r, g, b], \"std\": [r, g, b]}} on 0..1 pixels")


def _read_preprocessing(path: Path, spec):
    """NAME.preprocessing.json: {"mean": [3], "std": [3], optional "input_size", "interpolation"}."""
    from dataclasses import replace

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        size = int(d.get("input_size", spec.input_size))
        interp = str(d.get("interpolation", spec.preprocessing.interpolation))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not a preprocessing file ({{\"mean\": [r, g, b], \"std\": [r, g, b]}}): "
                             f"{str(exc).splitlines()[0][:120]}") from None
    if len(mean) != 3 or len(std) != 3 or any(v <= 0 for v in std):
        raise UserInputError(f"{path}: mean and std need 3 values each, std positive")
    if size != spec.input_size:
        raise UserInputError(f"{path}: input_size {size}, but variant {spec.name!r} takes {spec.input_size}")
    if interp not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise UserInputError(f"{path}: unknown interpolation {interp!r}")
    return replace(spec.preprocessing, mean=mean, std=std, resize=size, crop=size, interpolation=interp)


def find_labels(path: Path, labels: str | None = None) -> Path | None:
    """``labels`` if given, else the first of LABEL_FILES next to the model."""
    if labels:
        p = Path(labels)
        if not p.is_file():
            raise UserInputError(f"labels file not found: {labels}")
        return p
    stem = _weights_stem(path)
    for pattern in LABEL_FILES:
        p = path.with_name(pattern.format(stem=stem))
        if p.is_file():
            return p
    return None


def read_labels(path: Path, n: int) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read labels file {path}: {exc}") from None
    if len(names) != n:
        raise UserInputError(f"{path} has {len(names)} labels but the model {n} classes (one label per line)")
    if len(set(names)) != len(names):
        raise UserInputError(f"{path} lists a label twice")
    return names


def load_keras_model(path, variant: str | None = None, *, num_classes: int | None = None,
                     class_names: list[str] | None = None, labels: str | None = None, softmax: bool = False):
    """A Keras file as a :class:`~alexnet_deploy.models.weights.LoadedModel` of the matched variant.
    ``softmax`` only matters for a ``.weights.h5``, which does not record the final activation."""
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.models.alexnet import AlexNet, build_model
    from alexnet_deploy.models.specs import Preprocessing, default_class_names, get_variant
    from alexnet_deploy.models.weights import LoadedModel

    path = Path(path)
    kf = read_keras_file(path)
    ck_classes = _keras_classes(kf)
    if not kf.has_config and variant is None:
        raise UserInputError(f"{path} holds weights only (no layer list); name the variant with --variant")
    if num_classes is not None and ck_classes is not None and num_classes != ck_classes:
        raise ModelLoadError(f"{path} has {ck_classes} classes, not {num_classes}; drop --num-classes")
    match = match_variant(kf, variant, ck_classes or num_classes)
    spec = get_variant(match.variant)
    n = ck_classes or num_classes or spec.default_num_classes
    import torch

    with torch.device("meta"):  # no random init of what the Keras weights replace
        model = build_model(match.variant, num_classes=n, seed=None)
    state = state_dict_from_match(kf, match, model)
    if not kf.has_config:
        match.softmax = bool(softmax)
    model.load_state_dict(state, strict=True, assign=True)
    if match.softmax:
        if not isinstance(model, AlexNet):
            raise ModelLoadError(f"{path} ends in softmax, which the {match.variant!r} variant cannot carry; "
                                 "end the Keras model in logits (activation=None)")
        model.softmax = True
    model.eval()
    info = {"weights": "keras", "keras": {"format": kf.form, "keras_version": kf.keras_version,
                                          "data_format": match.data_format, "softmax": match.softmax,
                                          "layers": len(kf.layers)}}
    if not kf.has_config:
        info["keras"]["note"] = ("weights only: layer order from the file, BatchNorm epsilon 1e-3 (Keras' default), "
                                 f"{'softmax' if softmax else 'logits'} output as asked; the .keras file records all three")
    if match.prep is not None:
        mean, std = prep_mean_std(match.prep, path.name)
        prep = Preprocessing(resize=spec.input_size, crop=spec.input_size, mean=mean, std=std)
        info["keras"]["preprocessing_layers"] = match.prep.layers
        info["preprocessing_from"] = "the Keras model's Rescaling/Normalization layers"
    elif (side := path.with_name(_weights_stem(path) + PREPROCESSING_FILE)).is_file():
        prep = _read_preprocessing(side, spec)
        info["preprocessing_from"] = side.name
    else:  # nothing says what the input was: the caller must ask (export/deploy refuse, see preprocessing_unknown)
        prep = spec.preprocessing
        info["preprocessing_from"] = f"the {match.variant} variant's defaults (no Rescaling/Normalization layers)"
        info["preprocessing_unknown"] = True
    if class_names:
        names = list(class_names)
    else:
        lf = find_labels(path, labels)
        names = read_labels(lf, n) if lf is not None else default_class_names(n)
        if lf is not None:
            info["labels_file"] = lf.name
    if len(names) != n:
        raise UserInputError(f"{len(names)} class names for a model with {n} classes")
    return LoadedModel(model, match.variant, names, prep, str(path), sha256_file(path), match.softmax, info)


def keras_summary(loaded) -> str:
    k = loaded.info.get("keras", {})
    return (f"Keras {k.get('format')} ({k.get('keras_version') or 'version unknown'}, {k.get('data_format')}) "
            f"matched variant {loaded.variant!r}, {loaded.num_classes} classes, "
            f"{'softmax output' if loaded.softmax else 'logits'}; preprocessing from {loaded.info.get('preprocessing_from')}")
