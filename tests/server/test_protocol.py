"""server/protocol.py's request validation as plain functions, without a server: the same field-naming 4xx
errors the HTTP and gRPC endpoints answer with (tests/test_server*.py and tests/server/test_grpc.py check them over the
wire)."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from alexnet_deploy.server.protocol import (ModelSpec, ProtocolError, check_batch, check_input, check_model,
                                             parse_infer_head, prepare_infer, prepare_infer_body, split_body)

SPEC = ModelSpec("alexnet-fp32", "1", "input", (3, 4, 4), np.dtype(np.float32), "logits", 8)
U8 = ModelSpec("alexnet-int8", "1", "image", (4, 4, 3), np.dtype(np.uint8), "logits", 8)


def _head(shape, datatype="FP32", name="input", **extra):
    n = int(np.prod(shape)) * np.dtype({"FP32": np.float32, "UINT8": np.uint8, "FP16": np.float16}[datatype]).itemsize
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "parameters": {"binary_data_size": n}}], **extra}


def _raises(fn, status, field, match):
    with pytest.raises(ProtocolError, match=match) as info:
        fn()
    assert info.value.status == status and info.value.field == field, (info.value.status, info.value.field)
    return info.value


def test_a_valid_binary_request_gives_the_array():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    req, got = prepare_infer(_head(x.shape), x.tobytes(), SPEC)
    assert got.dtype == np.float32 and np.array_equal(got, x) and req.outputs == [] and req.id is None
    u = np.full((1, 4, 4, 3), 255, np.uint8)
    assert np.array_equal(prepare_infer(_head(u.shape, "UINT8", "image"), u.tobytes(), U8)[1], u)


def test_the_http_body_forms_agree():
    """JSON data, binary data behind Inference-Header-Content-Length, and a gzip body give the same array."""
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    as_json = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32",
                                      "data": x.ravel().tolist()}]}).encode()
    head = json.dumps(_head(x.shape)).encode()
    a = prepare_infer_body(as_json, None, SPEC)[1]
    b = prepare_infer_body(head + x.tobytes(), str(len(head)), SPEC)[1]
    c = prepare_infer_body(gzip.compress(as_json), None, SPEC, "gzip", 1 << 20)[1]
    assert np.array_equal(a, x) and np.array_equal(b, x) and np.array_equal(c, x)
    assert split_body(head + x.tobytes(), str(len(head)))[0] == _head(x.shape)


@pytest.mark.parametrize("head, binary, field, match", [
    (_head((1, 3, 4, 4), name="pixels"), bytes(192), "inputs", "takes one input named 'input'"),
    (_head((1, 3, 4, 4), "FP16"), bytes(96), "inputs[0].datatype", "must be FP32, got FP16"),
    (_head((1, 3, 5, 4)), bytes(240), "inputs[0].shape", r"must have shape \[N, 3, 4, 4\], got \[1, 3, 5, 4\]"),
    (_head((0, 3, 4, 4)), b"", "inputs[0].shape", r"got \[0, 3, 4, 4\]"),
    (_head((1, 3, 4, 4)), np.full(48, np.nan, np.float32).tobytes(), "inputs[0].data", "NaN or infinite"),
    (_head((1, 3, 4, 4)), bytes(191), "inputs[0].parameters.binary_data_size", "holds 191 binary bytes, 192"),
    (_head((1, 3, 4, 4)), bytes(193), None, "1 binary bytes after the declared inputs"),
    ({**_head((1, 3, 4, 4)), "outputs": [{"name": "probs"}]}, bytes(192), "outputs[0].name", "unknown output 'probs'"),
    ({**_head((1, 3, 4, 4)), "id": 7}, bytes(192), "id", "id must be a"),
    ({"inputs": []}, b"", None, "non-empty 'inputs' list"),
    ({"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": []}]}, b"", "inputs[0].shape",
     "non-negative integers"),
])
def test_bad_requests_are_400_naming_the_field(head, binary, field, match):
    _raises(lambda: prepare_infer(head, binary, SPEC), 400, field, match)


def test_body_level_errors():
    _raises(lambda: split_body(b"{not json", None), 400, None, "malformed JSON request")
    _raises(lambda: split_body(b"[1]", None), 400, None, "must be a JSON object")
    _raises(lambda: split_body(b"{}", "\u00b3"), 400, None, "non-negative integer of at most 18 ASCII digits")
    _raises(lambda: split_body(b"{}", "99"), 400, None, "does not fit the 2-byte body")
    bomb = gzip.compress(bytes(1 << 20))
    _raises(lambda: prepare_infer_body(bomb, None, SPEC, "gzip", 4096), 413, None, "inflates beyond the 4096-byte")
    _raises(lambda: prepare_infer_body(b"{}", None, SPEC, "br", 4096), 415, None, "not supported")
    _raises(lambda: parse_infer_head([], b""), 400, None, "must be a JSON object")


def test_model_name_version_and_batch():
    check_model(SPEC, "alexnet-fp32", None)
    check_model(SPEC, "alexnet-fp32", "1")
    check_model(SPEC, "alexnet-fp32", "", field="model_name")  # gRPC: an empty version means any
    e = _raises(lambda: check_model(SPEC, "alexnet", None), 404, None, "unknown model 'alexnet'")
    assert str(e).startswith("unknown model")
    _raises(lambda: check_model(SPEC, "alexnet-fp32", "2"), 404, None, "has no version '2' \\(only '1'\\)")
    e = _raises(lambda: check_model(SPEC, "x" * 500, "", field="model_name"), 404, "model_name", "^model_name: ")
    assert len(str(e)) < 200  # an echoed name is shortened on gRPC
    _raises(lambda: check_model(SPEC, "alexnet-fp32", "9", field="model_name"), 404, "model_version", "^model_version")
    check_batch(np.zeros((8, 3, 4, 4), np.float32), SPEC)
    _raises(lambda: check_batch(np.zeros((9, 3, 4, 4), np.float32), SPEC), 400, "inputs[0].shape",
            "batch 9 exceeds this server's max batch 8")


def test_check_input_on_a_parsed_request():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    req = parse_infer_head(_head(x.shape, "UINT8", "image"), x.tobytes())
    assert check_input(req, U8) is req.inputs["image"]
    _raises(lambda: check_input(req, SPEC), 400, "inputs", "one input named 'input'")


def test_the_field_is_read_from_the_message_or_given():
    assert ProtocolError("inputs[2].parameters.binary_data_size must be ...").field == "inputs[2].parameters.binary_data_size"
    assert ProtocolError("raw_input_contents[0]: 11 bytes").field == "raw_input_contents[0]"
    assert ProtocolError("server busy: queue full", 503).field is None
    assert ProtocolError("whatever", field="outputs").field == "outputs"
