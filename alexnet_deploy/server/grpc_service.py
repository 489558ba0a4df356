"""KServe v2 / Triton gRPC endpoint of alexnet-serve (``--grpc-port``): ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata and ModelInfer of KServe's ``grpc_predict_v2.proto`` (vendored in ``kserve_v2/``,
whose package and service names Triton's ``GRPCInferenceService`` keeps, so ``tritonclient.grpc`` works unmodified).

It is a thin adapter over the HTTP side: a ModelInfer request is rewritten into the v2 request head (the dict an
HTTP client sends as JSON) + raw input bytes and goes through the same ``protocol.prepare_infer`` checks, the same
dynamic batcher, queue limit and deadline (``run``), the same Triton statistics, the same per-route Prometheus
counters (endpoint = the HTTP route's name, status = the HTTP status the error maps from) and the same response
builder as ``POST /v2/models/.../infer``, so both protocols answer with the same bytes. It runs on uvicorn's event loop, started after the HTTP app is ready
and stopped (in-flight calls finished) before the batcher drains. HTTP statuses map to gRPC codes: 400
INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED.

Imported only when ``--grpc-port`` is given: grpcio and protobuf are optional ([serve] extra)."""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import socket
import time
from contextlib import asynccontextmanager

import numpy as np

from alexnet_deploy import __version__
from alexnet_deploy.errors import UserInputError
from alexnet_deploy.server.protocol import (DATATYPES, INLINE_PARSE_BYTES, ProtocolError, check_model,
                                             infer_response_parts, prepare_infer)

log = logging.getLogger("alexnet_deploy.server.grpc")
SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["classification"]  # what this gRPC endpoint offers (config and statistics are HTTP routes here)
# which InferTensorContents field carries each datatype (Triton's rules; FP16 and BF16 travel only as raw bytes)
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _pb():
    from alexnet_deploy.server.kserve_v2 import grpc_predict_v2_pb2

    return grpc_predict_v2_pb2


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind the gRPC port before the model loads (a busy port is one line and exit 2 at once); the socket is
    closed right before grpcio binds the same address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = str(exc.strerror or exc)
        hint = {errno.EADDRINUSE: " (another server is running there? choose another --grpc-port)",
                errno.EACCES: " (ports below 1024 need privileges; choose another --grpc-port)"}.get(exc.errno, "")
        raise UserInputError(f"cannot listen for gRPC on {host}:{port}: {reason}{hint}") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _param_value(p):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _params(entries, where: str) -> dict:
    out = {}
    for key, p in entries.items():
        v = _param_value(p)
        if v is None:
            raise ProtocolError(f"{where}parameters[{key!r}] has no value")
        out[key] = v
    return out


def to_v2_body(req) -> tuple[bytes, str]:
    """A ModelInferRequest -> the v2 binary-tensor body (JSON head + raw input bytes) and its head length, as an
    HTTP client would send it (protocol.parse_infer_request reads it)."""
    head, binary = to_v2_request(req)
    head_bytes = json.dumps(head).encode()
    return head_bytes + binary, str(len(head_bytes))


def to_v2_request(req) -> tuple[dict, bytes]:
    """A ModelInferRequest -> (the v2 request head, the raw input bytes it declares), which protocol.prepare_infer
    checks field by field exactly like an HTTP request (no JSON round trip on the request path)."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise ProtocolError(f"raw_input_contents: {len(raw)} entries for {len(req.inputs)} inputs "
                            "(one per input, or none with each input's contents)")
    inputs, blobs = [], []
    for i, t in enumerate(req.inputs):
        where = f"inputs[{i}]."
        if t.datatype not in DATATYPES:
            raise ProtocolError(f"{where}datatype: unknown datatype {t.datatype[:40]!r} "
                                f"(the v2 types are {', '.join(DATATYPES)})")
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"{where}shape must be a list of non-negative integers")
        itemsize = np.dtype(DATATYPES[t.datatype]).itemsize
        want = math.prod(shape) * itemsize
        if raw:
            if t.HasField("contents"):
                raise ProtocolError(f"{where}contents: input {t.name!r} has contents and raw_input_contents[{i}]")
            blob = raw[i]
            if len(blob) != want:
                raise ProtocolError(f"raw_input_contents[{i}]: {len(blob)} bytes for shape {shape} of "
                                    f"{t.datatype} ({want} bytes expected)")
        else:
            field = CONTENTS.get(t.datatype)
            if field is None:
                raise ProtocolError(f"{where}contents: {t.datatype} travels only in raw_input_contents")
            values = getattr(t.contents, field)
            if len(values) * itemsize != want:
                raise ProtocolError(f"{where}contents.{field}: {len(values)} values for shape {shape} "
                                    f"({want // itemsize} expected)")
            dtype = np.dtype(DATATYPES[t.datatype])
            arr = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
            if dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if int(arr.min()) < info.min or int(arr.max()) > info.max:
                    raise ProtocolError(f"{where}contents.{field}: values outside the {t.datatype} range "
                                        f"[{info.min}, {info.max}]")
            blob = arr.astype(dtype).tobytes()
        spec = {"name": t.name, "shape": shape, "datatype": t.datatype,
                "parameters": {**_params(t.parameters, where), "binary_data_size": len(blob)}}
        inputs.append(spec)
        blobs.append(blob)
    outputs = []
    for i, o in enumerate(req.outputs):
        params = _params(o.parameters, f"outputs[{i}].")
        params.pop("binary_data", None)  # gRPC outputs are always raw_output_contents
        outputs.append({"name": o.name, "parameters": {**params, "binary_data": True}})
    head = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if req.id:
        head["id"] = req.id
    if outputs:
        head["outputs"] = outputs
    return head, b"".join(blobs)


def to_infer_response(head: dict, blobs: list[bytes]):
    """infer_response_parts' answer (every output binary, as to_v2_request asks) -> a ModelInferResponse with
    raw_output_contents: the same values and bytes as the HTTP binary response, without its JSON round trip."""
    resp = _pb().ModelInferResponse(model_name=head["model_name"], model_version=head["model_version"],
                                    id=head.get("id", ""))
    if len(blobs) != len(head["outputs"]):
        raise ValueError("every gRPC output must be binary")
    for out, blob in zip(head["outputs"], blobs):
        resp.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        resp.raw_output_contents.append(blob)
    return resp


_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
          415: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class InferenceService:
    """The six RPCs, bound to one app's v2 hooks (app.state.v2) and statistics (app.state.metrics.stats)."""

    def __init__(self, app, runner, name: str, version: str):
        self.hooks = app.state.v2
        self.spec = self.hooks["spec"]
        self.metrics = app.state.metrics
        self.stats = app.state.metrics.stats
        self.state = self.hooks["state"]
        self.meta = runner.metadata
        self.name, self.version = name, version

    def _check_model(self, name: str, version: str) -> None:
        check_model(self.spec, name, version, field="model_name")

    async def server_live(self, req, context):
        return _pb().ServerLiveResponse(live=True)

    async def server_ready(self, req, context):
        return _pb().ServerReadyResponse(ready=bool(self.state["ready"]))

    async def model_ready(self, req, context):
        self._check_model(req.name, req.version)
        return _pb().ModelReadyResponse(ready=bool(self.state["ready"]))

    async def server_metadata(self, req, context):
        return _pb().ServerMetadataResponse(name="alexnet-deploy", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, req, context):
        self._check_model(req.name, req.version)
        m = self.hooks["model_meta"]
        pb = _pb()
        resp = pb.ModelMetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"])
        for t in m["inputs"]:
            resp.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in m["outputs"]:
            resp.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def model_infer(self, req, context):
        t0 = time.perf_counter()
        try:
            self._check_model(req.model_name, req.model_version)
            loop = asyncio.get_running_loop()

            def parse():
                t = time.perf_counter()
                r, x = prepare_infer(*to_v2_request(req), self.spec)
                return r, x, time.perf_counter() - t

            # small raw_input_contents (np.frombuffer) are parsed on the loop: the pool hop cost more than the parse
            with self.hooks["incoming"]():  # a forming batch waits for this request (batcher.incoming)
                if req.ByteSize() <= INLINE_PARSE_BYTES and not any(t.HasField("contents") for t in req.inputs):
                    v2req, x, input_s = parse()
                else:
                    v2req, x, input_s = await loop.run_in_executor(self.state["pool"], parse)
            out = await self.hooks["run"](x)
            t1 = time.perf_counter()
            resp = to_infer_response(*infer_response_parts(self.name, self.version, v2req,
                                                           {self.meta.output_name: out}, self.meta.class_names))
        except ProtocolError:
            self.stats.on_request(False, time.perf_counter() - t0)
            raise
        t2 = time.perf_counter()
        self.stats.on_request(True, t2 - t0, input_s, t2 - t1)
        return resp


# each RPC counts under the name of the HTTP route that does the same thing (server/app.py), so /metrics has one
# series per operation whichever protocol carried it
ENDPOINTS = {"ServerLive": "live", "ServerReady": "ready", "ModelReady": "model_ready",
             "ServerMetadata": "server_metadata", "ModelMetadata": "metadata", "ModelInfer": "infer"}


def _handler(fn, request_cls, response_cls, metrics=None, endpoint: str = "unmatched"):
    """A unary handler that decodes the request itself (a malformed message is INVALID_ARGUMENT, not grpcio's
    INTERNAL) and turns ProtocolError into the matching status with the message naming the field. Every call is
    counted in ``metrics`` (if given) under ``endpoint`` with the HTTP status its outcome corresponds to."""
    import grpc
    from google.protobuf.message import DecodeError

    async def call(raw: bytes, context):
        t0 = time.perf_counter()
        status = 500
        try:
            try:
                req = request_cls.FromString(raw)
            except DecodeError as exc:
                status = 400
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {request_cls.__name__}: {exc}")
            try:
                resp = await fn(req, context)
                status = 200
                return resp
            except ProtocolError as exc:
                status = exc.status
                await context.abort(getattr(grpc.StatusCode, _CODES.get(exc.status, "INVALID_ARGUMENT")),
                                    str(exc)[:1000])
            except Exception:  # noqa: BLE001 - logged here; the client gets one line, no traceback
                log.exception("internal error in %s", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
        finally:
            if metrics is not None:
                metrics.observe(endpoint, status, time.perf_counter() - t0)

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None,
                                               response_serializer=response_cls.SerializeToString)


async def start_grpc(app, runner, name: str, version: str, host: str, port: int, max_message_bytes: int,
                     max_concurrent_rpcs: int | None = None, reserved: socket.socket | None = None):
    """Start the grpc.aio server on the running event loop; -> (server, port)."""
    import grpc

    pb = _pb()
    svc = InferenceService(app, runner, name, version)
    rpcs = {
        "ServerLive": (svc.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (svc.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (svc.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (svc.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (svc.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": (svc.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    methods = {rpc: _handler(*args, metrics=svc.metrics, endpoint=ENDPOINTS[rpc]) for rpc, args in rpcs.items()}
    server = grpc.aio.server(
        handlers=[grpc.method_handlers_generic_handler(SERVICE, methods)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.so_reuseport", 0),  # a port someone else holds is an error, not a shared listener
                 ("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", -1)])
    if reserved is not None:
        reserved.close()
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError as exc:
        bound = 0
        log.error("gRPC bind failed: %s", exc)
    if not bound:
        raise UserInputError(f"cannot listen for gRPC on {host}:{port} (choose another --grpc-port)")
    await server.start()
    return server, bound


def attach_grpc(app, runner, name: str, version: str, host: str, port: int, max_message_bytes: int,
                max_concurrent_rpcs: int | None = None, reserved: socket.socket | None = None,
                grace_s: float = 10.0, on_start=None) -> None:
    """Run the gRPC endpoint for the app's lifetime: started once the HTTP side is ready (model warm), stopped
    before its shutdown drains the batcher (in-flight calls get ``grace_s`` to finish)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as st:
            server, bound = await start_grpc(app, runner, name, version, host, port, max_message_bytes,
                                             max_concurrent_rpcs, reserved)
            if on_start is not None:
                on_start(bound)
            try:
                yield st
            finally:
                await server.stop(grace_s)

    app.router.lifespan_context = lifespan
