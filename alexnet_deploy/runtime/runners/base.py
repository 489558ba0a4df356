"""One runner lifecycle for every backend (after Polygraphy's runners): ``activate`` -> ``infer`` ->
``deactivate``, usable as a context manager; subclasses implement the ``*_impl`` methods. Inputs are
checked (name, rank, shape, dtype) before they reach the backend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alexnet_deploy.errors import InferenceError, ModelLoadError
from alexnet_deploy.runtime.metadata import ModelMetadata


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or None (or the dimension's name, where the model names it) for a dynamic dimension
    dtype: np.dtype


_FLOAT_TYPES = ("float32", "float16", "float64")


def _dims(shape) -> str:
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else "?" if not isinstance(d, int) else str(d)
                           for i, d in enumerate(shape)) + "]"


def check_model_contract(inputs: list[TensorSpec], outputs: list[TensorSpec], meta: ModelMetadata, where: str) -> None:
    """The one contract every command relies on, checked where a model is opened (runners, Triton export,
    TensorRT build): one image input of the metadata's name, layout, size and type, and one output of class
    scores [N, num_classes]. ``shape`` entries are ints, or None / a name for a dynamic dimension.

    Raises ModelLoadError naming everything that is wrong (a two-input graph failed only at the first inference,
    with ONNX Runtime's message; an [N, 10, 1, 1] output got a Triton config of dims [10])."""
    problems = []
    ours = not meta.source_weights.startswith("unknown (defaults")  # --variant defaults name no tensors
    if len(inputs) != 1:
        problems.append(f"it takes {len(inputs)} inputs ({', '.join(repr(t.name) for t in inputs) or 'none'}), "
                        "not one image input")
    else:
        t = inputs[0]
        want = (None, *meta.input_dims)
        if ours and t.name != meta.input_name:
            problems.append(f"its input is named {t.name!r} but its metadata says {meta.input_name!r}")
        if len(t.shape) != 4:
            problems.append(f"its input {t.name!r} has shape {_dims(t.shape)}, not {_dims(want)}")
        else:
            bad = [i for i in range(1, 4) if isinstance(t.shape[i], int) and t.shape[i] != want[i]]
            if bad:
                problems.append(f"its input {t.name!r} has shape {_dims(t.shape)}, but its metadata "
                                f"({meta.input_format}) says {_dims(want)}")
        dtype = np.dtype(t.dtype).name if t.dtype is not None else None
        if dtype is not None:
            if meta.input_dtype == "uint8" and dtype != "uint8":
                problems.append(f"its input {t.name!r} is {dtype}, but its metadata ({meta.input_format}) says uint8")
            elif meta.input_dtype != "uint8" and dtype not in _FLOAT_TYPES:
                problems.append(f"its input {t.name!r} is {dtype}, not floating point")
    if len(outputs) != 1:
        problems.append(f"it has {len(outputs)} outputs ({', '.join(repr(t.name) for t in outputs) or 'none'}), "
                        f"not one [N, {meta.num_classes}] output of class scores")
    else:
        t = outputs[0]
        if ours and t.name != meta.output_name:
            problems.append(f"its output is named {t.name!r} but its metadata says {meta.output_name!r}")
        shape_problem = output_shape_problem(t.shape, meta)
        if shape_problem and not problems:  # the output alone: the wording the runners always used
            raise ModelLoadError(f"{where} {shape_problem}")
        if shape_problem:
            problems.append(f"it {shape_problem}")
    if problems:
        raise ModelLoadError(f"{where} is not a model alexnet-deploy can run: {'; '.join(problems)}")


def classes_source(meta: ModelMetadata) -> str:
    named = meta.source_weights.startswith("unknown (defaults")
    return (f"variant {meta.variant!r} has {meta.num_classes}" if named
            else f"its metadata lists {meta.num_classes} class names")


def output_shape_problem(shape, meta: ModelMetadata) -> str | None:
    """Why an output of ``shape`` is not (N, num_classes), or None."""
    n = meta.num_classes
    dims = "(" + ", ".join(d if isinstance(d, str) else "?" if d is None else str(d) for d in shape) + ")"
    if len(shape) != 2:
        return (f"outputs shape {dims}, not (N, {n}): not a classifier alexnet-deploy can run (its output must be "
                "one row of class scores per image)")
    if isinstance(shape[1], int) and shape[1] != n:
        return (f"outputs {shape[1]} classes but {classes_source(meta)}; give the matching --variant / "
                "--num-classes or re-export the model")
    return None


def session_io(session) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an ONNX Runtime InferenceSession as TensorSpecs."""
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64, "tensor(bool)": np.bool_}

    def spec(t):
        dtype = types.get(t.type)
        return TensorSpec(t.name, tuple(d if isinstance(d, (int, str)) else None for d in t.shape),
                          np.dtype(dtype) if dtype is not None else np.dtype("O"))

    return [spec(t) for t in session.get_inputs()], [spec(t) for t in session.get_outputs()]


class Runner:
    engine = "base"

    def __init__(self, metadata: ModelMetadata):
        self.metadata = metadata
        self.is_active = False
        self.input_spec: TensorSpec | None = None
        self.provider = self.engine  # what actually runs: filled in on activation
        self.max_batch: int | None = None  # inclusive batch range the model accepts
        self.min_batch: int = 1

    # lifecycle -------------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            io = self.io_specs()
            if io is not None:
                try:
                    check_model_contract(*io, self.metadata, str(getattr(self, "path", self.engine)))
                except ModelLoadError:
                    self.deactivate_impl()
                    raise
            self.is_active = True
        return self

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        """After activate_impl: the model's inputs and outputs, for the contract check (None: not known).
        Here: an ONNX Runtime session's (``self.session``); other backends may override."""
        session = getattr(self, "session", None)
        if session is not None and hasattr(session, "get_inputs") and hasattr(session, "get_outputs"):
            return session_io(session)
        return None

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # inference -------------------------------------------------------------------------------------
    def infer(self, inputs) -> np.ndarray:
        """A batch (N, 3, H, W) float32, or ``{input_name: batch}`` -> outputs (N, num_classes) float32."""
        if not self.is_active:
            raise InferenceError(f"{self.engine} runner is not active; call activate() or use it in a with block")
        x = self.check_inputs(inputs)
        out = np.asarray(self.infer_impl(x), dtype=np.float32)
        if out.shape != (len(x), self.metadata.num_classes):
            raise InferenceError(f"the model returned shape {out.shape} for a batch of {len(x)}, not "
                                 f"({len(x)}, {self.metadata.num_classes}) ({self._classes_source()})")
        return out

    def check_output_shape(self, shape, where: str) -> None:
        """At activation: the model's declared output must be (N, num_classes) as its metadata (or --variant)
        says; a foreign model (a feature map, another class count) is refused in one line."""
        problem = output_shape_problem(shape, self.metadata)
        if problem:
            raise ModelLoadError(f"{where} {problem}")

    def _classes_source(self) -> str:
        return classes_source(self.metadata)

    def infer_batches(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Any number of images: chunks within the model's batch range, a short last chunk padded for
        static-batch models (the padding rows are dropped from the result)."""
        step = min(batch_size, self.max_batch) if self.max_batch else batch_size
        outs = []
        for i in range(0, len(x), step):
            xb = x[i: i + step]
            n = len(xb)
            if n < self.min_batch:
                xb = np.concatenate([xb, np.repeat(xb[-1:], self.min_batch - n, axis=0)])
            outs.append(self.infer(xb)[:n])
        return np.concatenate(outs) if outs else np.zeros((0, self.metadata.num_classes), np.float32)

    def check_inputs(self, inputs) -> np.ndarray:
        spec = self.input_spec
        if isinstance(inputs, dict):
            if set(inputs) != {spec.name}:
                raise InferenceError(f"the model takes one input named {spec.name!r}, got {sorted(inputs)}")
            inputs = inputs[spec.name]
        x = np.asarray(inputs)
        if x.dtype != spec.dtype:
            if spec.dtype == np.uint8:  # raw-pixel model: never cast normalized floats to bytes
                raise InferenceError(f"input {spec.name!r} takes uint8 RGB pixels (N, H, W, 3), got {x.dtype}; "
                                     "build the batch with runtime.preprocess.model_batch")
            if x.dtype.kind != "f":
                raise InferenceError(f"input {spec.name!r} must be floating point ({spec.dtype}), got {x.dtype}")
            x = x.astype(spec.dtype)
        if x.ndim != len(spec.shape):
            raise InferenceError(f"input {spec.name!r} must have rank {len(spec.shape)} "
                                 f"(shape {_shape_str(spec.shape)}), got shape {x.shape}")
        for dim, (got, want) in enumerate(zip(x.shape, spec.shape)):
            if want is not None and got != want:
                raise InferenceError(f"input {spec.name!r} must have shape {_shape_str(spec.shape)}, "
                                     f"got {x.shape} (dimension {dim})")
        n = x.shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            raise InferenceError(f"batch {n} is outside what this model accepts "
                                 f"({self.min_batch}..{self.max_batch if self.max_batch else 'any'})")
        return np.ascontiguousarray(x)

    # to override ----------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.engine} ({self.provider})"


def _shape_str(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
