"""Open Inference Protocol v2 (KServe / Triton) tensors: JSON and the binary tensor data extension.

A request body is JSON, or, with the ``Inference-Header-Content-Length: N`` header, N bytes of JSON
followed by the raw bytes of each input that declares ``parameters.binary_data_size`` (Triton's binary
tensor data extension, which standard v2 clients use by default)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NP_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}


class ProtocolError(Exception):
    """Becomes a 4xx response ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[dict]  # requested outputs (name, parameters)
    binary_outputs_default: bool


def _json(data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON request: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return obj


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
        head, binary = _json(body[:n]), memoryview(body)[n:]
    else:
        head, binary = _json(body), memoryview(b"")
    inputs_json = head.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    offset, inputs = 0, {}
    for spec in inputs_json:
        if not isinstance(spec, dict):
            raise ProtocolError("each input must be an object with name, shape, datatype and data")
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"input {name!r}: needs a string 'name' and a 'shape' list of non-negative integers")
        if dtype not in DATATYPES:
            raise ProtocolError(f"input {name!r}: unknown datatype {dtype!r} (v2 types: {', '.join(DATATYPES)})")
        np_dtype = np.dtype(DATATYPES[dtype])
        count = int(np.prod(shape)) if shape else 1
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if count * np_dtype.itemsize != size:
                raise ProtocolError(f"input {name!r}: binary_data_size {size} does not match shape {shape} "
                                    f"of {dtype} ({count * np_dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: the body holds {len(binary) - offset} binary bytes, "
                                    f"{size} declared")
            arr = np.frombuffer(binary[offset: offset + size], dtype=np_dtype).reshape(shape)
            offset += size
        else:
            if "data" not in spec:
                raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
            try:
                arr = np.asarray(spec["data"], dtype=np_dtype)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(f"input {name!r}: data is not {dtype}: {exc}") from None
            if arr.size != count:
                raise ProtocolError(f"input {name!r}: {arr.size} values for shape {shape} ({count} expected)")
            arr = arr.reshape(shape)
        inputs[name] = arr
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} binary bytes after the declared inputs")
    params = head.get("parameters") or {}
    outputs = head.get("outputs") or []
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    return InferRequest(head.get("id"), inputs, outputs, bool(params.get("binary_data_output", False)))


def build_infer_response(model: str, version: str, req: InferRequest, outputs: dict[str, np.ndarray]
                         ) -> tuple[bytes, dict[str, str]]:
    """-> (body, headers). Outputs asked with ``parameters.binary_data`` go in the binary section."""
    wanted = req.outputs or [{"name": n} for n in outputs]
    head = {"model_name": model, "model_version": version, "outputs": []}
    if req.id is not None:
        head["id"] = req.id
    blobs = []
    for spec in wanted:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in outputs:
            raise ProtocolError(f"unknown output {name!r}; this model has {', '.join(outputs)}")
        arr = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "shape": list(arr.shape), "datatype": NP_TO_V2[arr.dtype]}
        binary = (spec.get("parameters") or {}).get("binary_data", req.binary_outputs_default)
        if binary:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        head["outputs"].append(entry)
    head_bytes = json.dumps(head).encode()
    if not blobs:
        return head_bytes, {"content-type": "application/json"}
    return head_bytes + b"".join(blobs), {"content-type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(head_bytes))}
