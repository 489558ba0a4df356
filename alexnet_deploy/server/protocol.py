"""Open Inference Protocol v2 (KServe / Triton) tensors: JSON and the binary tensor data extension.

A request body is JSON, or, with the ``Inference-Header-Content-Length: N`` header, N bytes of JSON
followed by the raw bytes of each input that declares ``parameters.binary_data_size`` (Triton's binary
tensor data extension, which standard v2 clients use by default).

Every field is checked for its JSON type before use, so a malformed request is a 400 that names the field
(``inputs[0].shape``), never an exception from numpy; responses are strict JSON (no NaN / Infinity)."""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NP_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
# binary infer requests up to this size are parsed on the event loop (np.frombuffer: cheaper than a pool hop)
INLINE_PARSE_BYTES = 256 * 1024
MAX_ELEMENTS = 2**31  # no tensor in a request may declare more elements than this (checked before allocating)


# the request field an error message starts with ("inputs[0].shape: ...", "raw_input_contents[1]: ...")
_FIELD = re.compile(r"(?:inputs|outputs|raw_input_contents|model_name|model_version|id)(?:\[\d+\])?"
                    r"(?:\.[A-Za-z_]+(?:\[[^\]]*\])?)*(?=[: ]|$)")


class ProtocolError(Exception):
    """Becomes a 4xx response ``{"error": message}`` (HTTP) or the matching status (gRPC).

    ``status`` is the HTTP status; ``field`` the request field at fault (``inputs[0].shape``), given or read from
    the start of the message, None when the fault is not one field (a busy server, a missing header)."""

    def __init__(self, message: str, status: int = 400, close: bool = False, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.close = close  # the body may be unread: answer with "connection: close"
        if field is None:
            m = _FIELD.match(message)
            field = m.group(0) if m else None
        self.field = field


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[dict]  # requested outputs: {"name": str, "parameters": dict}
    binary_outputs_default: bool


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _json(data: bytes | memoryview) -> dict:
    try:
        obj = json.loads(bytes(data), parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("malformed JSON request: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON request: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return obj


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800"): strict JSON parsers reject it on the way back
        return False
    return True


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}parameters must be a JSON object")
    return params


def _flag(params: dict, key: str, where: str, default: bool) -> bool:
    v = params.get(key, default)
    if not isinstance(v, bool):
        raise ProtocolError(f"{where}parameters.{key} must be true or false")
    return v


_HEADER_INT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "³", and int() of 5,000 digits raises


def header_int(value: str, header: str) -> int:
    """A non-negative integer header value; anything else (superscripts, signs, overlong digit runs) is a 400."""
    text = value.strip(" \t")
    if not _HEADER_INT.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ProtocolError(f"the {header} header must be a non-negative integer of at most 18 ASCII digits, "
                            f"got {shown!r}")
    return int(text)


CONTENT_ENCODINGS = ("gzip", "deflate")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A request body sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's
    request_compression_algorithm), inflated with the body limit applied to the result (a 16 KB gzip that
    inflates to gigabytes stops at ``limit`` + 1 bytes)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in CONTENT_ENCODINGS:
        raise ProtocolError(f"Content-Encoding {encoding[:40]!r} is not supported (use gzip, deflate or none)", 415)
    # gzip: the gzip wrapper (wbits 16+15); deflate is the zlib format (RFC 9110), raw deflate is also taken
    attempts = (31,) if enc == "gzip" else (15, -15)
    for wbits in attempts:
        d = zlib.decompressobj(wbits=wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            if wbits == attempts[-1]:
                raise ProtocolError(f"the {enc} request body is corrupt: {exc}") from None
            continue
        if len(out) > limit or d.unconsumed_tail:
            raise ProtocolError(f"the {enc} request body inflates beyond the {limit}-byte limit (--max-body-mb)", 413)
        if not d.eof:
            raise ProtocolError(f"the {enc} request body is truncated")
        if d.unused_data:
            raise ProtocolError(f"{len(d.unused_data)} bytes after the end of the {enc} request body")
        return out
    raise ProtocolError(f"the {enc} request body is corrupt")


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """An HTTP v2 body -> (the parsed JSON head, the binary section after it)."""
    if header_length is not None:
        n = header_int(header_length, HEADER_LENGTH)
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
        return _json(memoryview(body)[:n]), memoryview(body)[n:]
    return _json(body), memoryview(b"")


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    return parse_infer_head(*split_body(body, header_length))


def parse_infer_head(head: dict, binary: bytes | memoryview = b"") -> InferRequest:
    """A parsed v2 request head (the JSON object, as HTTP sends it or gRPC's adapter builds it) and the raw bytes
    of its binary inputs -> an InferRequest; every field is type-checked, errors name it."""
    if not isinstance(head, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    binary = memoryview(binary)
    request_id = head.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not _utf8(request_id)):
        raise ProtocolError("id must be a (valid Unicode) string")
    params = _params(head, "")
    inputs_json = head.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    offset, inputs = 0, {}
    for i, spec in enumerate(inputs_json):
        where = f"inputs[{i}]."
        if not isinstance(spec, dict):
            raise ProtocolError(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}name must be a non-empty string")
        if name in inputs:
            raise ProtocolError(f"{where}name: input {name!r} appears more than once")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ProtocolError(f"{where}shape must be a list of non-negative integers")
        if not isinstance(dtype, str) or dtype not in DATATYPES:
            raise ProtocolError(f"{where}datatype: unknown datatype (the v2 types are {', '.join(DATATYPES)})")
        np_dtype = np.dtype(DATATYPES[dtype])
        count = math.prod(shape)  # Python integers: no int64 overflow
        if count > MAX_ELEMENTS or any(d > MAX_ELEMENTS for d in shape):
            raise ProtocolError(f"{where}shape {shape} declares {count} elements (limit {MAX_ELEMENTS})")
        size = _params(spec, where).get("binary_data_size")
        if size is not None:
            if not _is_int(size) or size < 0:
                raise ProtocolError(f"{where}parameters.binary_data_size must be a non-negative integer")
            if count * np_dtype.itemsize != size:
                raise ProtocolError(f"{where}parameters.binary_data_size {size} does not match shape {shape} "
                                    f"of {dtype} ({count * np_dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise ProtocolError(f"{where}parameters.binary_data_size: the body holds "
                                    f"{len(binary) - offset} binary bytes, {size} declared")
            arr = np.frombuffer(binary[offset: offset + size], dtype=np_dtype).reshape(shape)
            offset += size
        else:
            if "data" not in spec:
                raise ProtocolError(f"{where}data: input {name!r} has neither 'data' nor parameters.binary_data_size")
            data = spec["data"]
            if not isinstance(data, list):
                raise ProtocolError(f"{where}data must be a list of numbers")
            try:
                arr = np.asarray(data, dtype=np_dtype)
                if np_dtype.kind in "iu" and np.asarray(data).dtype.kind not in "iu":  # 1.5 would become 1
                    raise TypeError
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError(f"{where}data: the values are not all {dtype} numbers "
                                    "(or the nested lists are ragged)") from None
            if arr.size != count:
                raise ProtocolError(f"{where}data: {arr.size} values for shape {shape} ({count} expected)")
            arr = arr.reshape(shape)
        inputs[name] = arr
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} binary bytes after the declared inputs")
    outputs_json = head.get("outputs")
    if outputs_json is None:
        outputs_json = []
    if not isinstance(outputs_json, list):
        raise ProtocolError("outputs must be a list")
    binary_default = _flag(params, "binary_data_output", "", False)
    outputs, seen = [], set()
    for i, spec in enumerate(outputs_json):
        where = f"outputs[{i}]."
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"{where}name: each requested output must be an object with a string 'name'")
        if spec["name"] in seen:
            raise ProtocolError(f"{where}name: output {spec['name']!r} is requested more than once")
        seen.add(spec["name"])
        out_params = _params(spec, where)
        _flag(out_params, "binary_data", where, binary_default)
        count = out_params.get("classification", 0)
        if not _is_int(count) or count < 0:
            raise ProtocolError(f"{where}parameters.classification must be a non-negative integer (the class count)")
        outputs.append({"name": spec["name"], "parameters": out_params})
    return InferRequest(request_id, inputs, outputs, binary_default)


def check_outputs(req: InferRequest, available: list[str]) -> None:
    """Reject a request for an output the model does not have (before running inference)."""
    for i, spec in enumerate(req.outputs):
        if spec["name"] not in available:
            raise ProtocolError(f"outputs[{i}].name: unknown output {spec['name']!r}; this model has "
                                f"{', '.join(repr(n) for n in available)}")


@dataclass(frozen=True)
class ModelSpec:
    """What request validation needs to know of the served model and the server's limits."""
    name: str
    version: str
    input_name: str
    input_dims: tuple[int, ...]  # per image: (3, H, W), or (H, W, 3) for uint8-nhwc models
    input_dtype: np.dtype
    output_name: str
    max_batch: int

    @property
    def v2_type(self) -> str:
        return NP_TO_V2[np.dtype(self.input_dtype)]


def check_model(spec: ModelSpec, name: str, version: str | None, field: str = "") -> None:
    """404 for a model name or version this server does not serve. ``field`` (gRPC: ``"model_name"``) prefixes
    the message with the request field and shortens echoed values; an empty or None version means "any"."""
    if name != spec.name:
        shown = name[:100] if field else name
        where = f"{field}: " if field else ""
        raise ProtocolError(f"{where}unknown model {shown!r}; this server serves {spec.name!r}", 404,
                            field=field or None)
    if version and version != spec.version:
        shown = version[:40] if field else version
        where = "model_version: " if field else ""
        raise ProtocolError(f"{where}model {name!r} has no version {shown!r} (only {spec.version!r})", 404,
                            field="model_version" if field else None)


def check_input(req: InferRequest, spec: ModelSpec) -> np.ndarray:
    """The one input tensor of a parsed request, checked against the model (name, datatype, shape, batch, finite
    values) and its outputs against the model's; -> the batch array."""
    if set(req.inputs) != {spec.input_name}:
        raise ProtocolError(f"inputs: this model takes one input named {spec.input_name!r}, "
                            f"got {', '.join(repr(n) for n in req.inputs)}", field="inputs")
    x = req.inputs[spec.input_name]
    dtype = np.dtype(spec.input_dtype)
    if x.dtype != dtype:
        raise ProtocolError(f"inputs[0].datatype: input {spec.input_name!r} must be {spec.v2_type}, "
                            f"got {NP_TO_V2[x.dtype]}")
    dims = tuple(spec.input_dims)
    if x.ndim != 4 or tuple(x.shape[1:]) != dims or x.shape[0] < 1:
        raise ProtocolError(f"inputs[0].shape: input {spec.input_name!r} must have shape "
                            f"[N, {', '.join(map(str, dims))}], got {list(x.shape)}")
    if dtype.kind == "f" and not np.isfinite(x).all():
        raise ProtocolError(f"inputs[0].data: input {spec.input_name!r} holds NaN or infinite values")
    check_outputs(req, [spec.output_name])
    return x


def check_batch(x: np.ndarray, spec: ModelSpec) -> None:
    if len(x) > spec.max_batch:
        raise ProtocolError(f"batch {len(x)} exceeds this server's max batch {spec.max_batch}",
                            field="inputs[0].shape")


def prepare_infer(head: dict, binary: bytes | memoryview, spec: ModelSpec) -> tuple[InferRequest, np.ndarray]:
    """A v2 request head + binary section -> (the parsed request, its checked input batch)."""
    req = parse_infer_head(head, binary)
    return req, check_input(req, spec)


def prepare_infer_body(body: bytes, header_length: str | None, spec: ModelSpec, encoding: str | None = None,
                       body_limit: int = 16 * 1024 * 1024) -> tuple[InferRequest, np.ndarray]:
    """An HTTP request body (compressed with ``encoding`` or not; ``body_limit`` applies to the inflated size)
    -> (the parsed request, its checked input batch)."""
    if encoding is not None:
        body = decompress(body, encoding, body_limit)
    return prepare_infer(*split_body(body, header_length), spec)


def classify(scores: np.ndarray, count: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: (N, C) scores -> (N, min(count, C)) strings "<value>:<index>[:<label>]",
    the highest values first (compared as the output's type; ties by lower index), values as C's "%f"."""
    k = min(count, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        i = int(order[pos])
        value = float(scores[pos[:-1] + (i,)])
        label = f":{labels[i]}" if labels and i < len(labels) else ""
        out[pos] = f"{value:f}:{i}{label}"
    return out


def _bytes_tensor(arr: np.ndarray) -> bytes:
    """The binary form of a BYTES tensor: each element as a 4-byte little-endian length and its UTF-8 bytes."""
    parts = []
    for s in arr.ravel():
        b = s.encode("utf-8")
        parts.append(len(b).to_bytes(4, "little") + b)
    return b"".join(parts)


def build_infer_response(model: str, version: str, req: InferRequest, outputs: dict[str, np.ndarray],
                         labels: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """-> (body, headers). Outputs asked with ``parameters.binary_data`` go in the binary section (raw IEEE
    values, NaN included); a non-finite value asked for as JSON is an error, as JSON has no NaN. An output asked
    with ``parameters.classification: k`` is returned as Triton does: BYTES [N, k] "value:index:label"."""
    head, blobs = infer_response_parts(model, version, req, outputs, labels)
    head_bytes = json.dumps(head, allow_nan=False).encode()
    if not blobs:
        return head_bytes, {"content-type": "application/json"}
    return head_bytes + b"".join(blobs), {"content-type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(head_bytes))}


def infer_response_parts(model: str, version: str, req: InferRequest, outputs: dict[str, np.ndarray],
                         labels: list[str] | None = None) -> tuple[dict, list[bytes]]:
    """The response head (the v2 JSON object) and the binary blobs, in the order of the head's outputs that have
    ``parameters.binary_data_size`` (the HTTP body and the gRPC message are both made from these)."""
    check_outputs(req, list(outputs))
    wanted = req.outputs or [{"name": n, "parameters": {}} for n in outputs]
    head = {"model_name": model, "model_version": version, "outputs": []}
    if req.id is not None:
        head["id"] = req.id
    blobs = []
    for spec in wanted:
        name = spec["name"]
        arr = np.ascontiguousarray(outputs[name])
        count = spec["parameters"].get("classification", 0)
        if count:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ProtocolError(f"output {name!r} holds NaN or infinite values; no classification of it is possible")
            classes = classify(arr, count, labels)
            entry = {"name": name, "shape": list(classes.shape), "datatype": "BYTES"}
            if spec["parameters"].get("binary_data", req.binary_outputs_default):
                blob = _bytes_tensor(classes)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = classes.ravel().tolist()
            head["outputs"].append(entry)
            continue
        entry = {"name": name, "shape": list(arr.shape), "datatype": NP_TO_V2[arr.dtype]}
        if spec["parameters"].get("binary_data", req.binary_outputs_default):
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ProtocolError(f"output {name!r} holds NaN or infinite values, which JSON cannot carry "
                                    "(are the inputs in the model's range?); ask for it with binary_data")
            entry["data"] = arr.ravel().tolist()
        head["outputs"].append(entry)
    return head, blobs
