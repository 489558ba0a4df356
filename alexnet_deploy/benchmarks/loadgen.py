"""A load generator for v2 servers (like Triton's perf_analyzer): N concurrent clients send real v2 infer
requests with binary tensors for a fixed time; throughput and latency percentiles per concurrency.

``protocol="http"``: the v2 REST binary-tensor extension over one keep-alive connection per client.
``protocol="grpc"``: KServe v2 ``ModelInfer`` with ``raw_input_contents`` over one channel (HTTP/2 connection)
per client. The gRPC message classes are passed in (``messages``: a module with ``ModelInferRequest`` and
``ModelMetadataRequest/Response``, e.g. the vendored ``server/kserve_v2/grpc_predict_v2_pb2``, which the CLI
hands over, since a benchmark does not import the server), else tritonclient.grpc's ``service_pb2``."""
from __future__ import annotations

import json
import threading
import time
import urllib.parse

import numpy as np

from alexnet_deploy.benchmarks.stats import summarize
from alexnet_deploy.errors import UserInputError

# The client side of the v2 binary-tensor extension, spelled out as tritonclient does (a client does not import
# the server): the JSON header's length travels in this HTTP header, the tensor bytes follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"


GRPC_SERVICE = "/inference.GRPCInferenceService"
PROTOCOLS = ("http", "grpc")


def _target(url: str, protocol: str = "http") -> tuple[str, int, str]:
    u = urllib.parse.urlparse(url if "://" in url else f"{protocol}://{url}")
    if u.scheme != protocol or not u.hostname:
        raise UserInputError(f"--server {url!r}: give an {protocol}://HOST:PORT address (--protocol {protocol})")
    return u.hostname, u.port or (80 if protocol == "http" else 8001), u.path.rstrip("/")


def _messages(messages):
    if messages is not None:
        return messages
    try:
        from tritonclient.grpc import service_pb2
    except ImportError:
        raise UserInputError("--protocol grpc needs the KServe v2 message classes: pip install "
                             "'alexnet-deploy[serve]' (alexnet-bench passes the server's own) or tritonclient[grpc]") from None
    return service_pb2


def _grpc_metadata(host: str, port: int, model: str | None, url: str, pb) -> dict:
    """ModelMetadata over gRPC -> the same dict shape as the REST metadata."""
    import grpc

    if not model:
        raise UserInputError(f"{url}: KServe v2 gRPC has no model index; name the model with --model-name")
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        call = ch.unary_unary(f"{GRPC_SERVICE}/ModelMetadata", request_serializer=pb.ModelMetadataRequest.SerializeToString,
                              response_deserializer=pb.ModelMetadataResponse.FromString)
        try:
            m = call(pb.ModelMetadataRequest(name=model), timeout=30)
        except grpc.RpcError as exc:
            raise UserInputError(f"{url} answered {exc.code().name} for the metadata of model {model!r}: "
                                 f"{exc.details()}") from None
    return {"name": m.name, "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.outputs]}


def _input_array(shape: list[int], seed: int, datatype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)  # UINT8: raw pixels (a uint8-nhwc model); else normalized-looking floats
    return (rng.integers(0, 256, shape, dtype=np.uint8) if datatype == "UINT8"
            else rng.standard_normal(shape).astype(np.float32))


def _grpc_request(model: str, input_name: str, shape: list[int], output_name: str, seed: int, datatype: str,
                  pb) -> bytes:
    x = _input_array(shape, seed, datatype)
    req = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    req.inputs.add(name=input_name, datatype="UINT8" if x.dtype == np.uint8 else "FP32", shape=shape)
    req.outputs.add(name=output_name)
    return req.SerializeToString()


def _request_body(input_name: str, shape: list[int], output_name: str, seed: int,
                  datatype: str = "FP32") -> tuple[bytes, dict]:
    x = _input_array(shape, seed, datatype)
    head = json.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "UINT8" if x.dtype == np.uint8 else "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes(), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def _get_json(host: str, port: int, method: str, path: str, url: str) -> tuple[int, object]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None,
                     headers={"Content-Type": "application/json"} if method == "POST" else {})
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as exc:
        raise UserInputError(f"cannot reach {url}: {exc}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw or b"{}")
    except ValueError:
        return resp.status, {}


def served_model(url: str) -> str:
    """The one model a v2 server lists (Triton's repository index, which alexnet-serve also answers)."""
    host, port, prefix = _target(url)
    status, index = _get_json(host, port, "POST", f"{prefix}/v2/repository/index", url)
    if status != 200 or not isinstance(index, list):
        raise UserInputError(f"{url} does not list its models (POST /v2/repository/index answered {status}); "
                             "name the model with --model-name")
    names = sorted({m.get("name") for m in index if isinstance(m, dict) and isinstance(m.get("name"), str)})
    if len(names) != 1:
        listed = ", ".join(names) if names else "none"
        raise UserInputError(f"{url} serves {len(names)} models ({listed}); choose one with --model-name")
    return names[0]


class _HttpClient:
    def __init__(self, host, port, path, body, headers):
        import http.client

        self.http = http.client
        self.host, self.port, self.path, self.body, self.headers = host, port, path, body, headers
        self.conn = self.http.HTTPConnection(host, port, timeout=30)

    def infer(self) -> bool:
        try:
            self.conn.request("POST", self.path, body=self.body, headers=self.headers)
            r = self.conn.getresponse()
            r.read()
            return r.status == 200
        except OSError:
            self.conn.close()
            self.conn = self.http.HTTPConnection(self.host, self.port, timeout=30)
            return False

    def close(self):
        self.conn.close()


class _GrpcClient:
    def __init__(self, host, port, request: bytes):
        import grpc

        self.grpc = grpc
        # a channel of its own (its own HTTP/2 connection), as each HTTP client has its own keep-alive connection
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1),
                                                                        ("grpc.max_receive_message_length", -1)])
        self.call = self.channel.unary_unary(f"{GRPC_SERVICE}/ModelInfer")
        self.request = request

    def infer(self) -> bool:
        try:
            self.call(self.request, timeout=30)
            return True
        except self.grpc.RpcError:
            return False

    def close(self):
        self.channel.close()


def run_load(url: str, concurrency_levels: list[int], duration_s: float, model: str | None = None,
             batch: int = 1, warmup_ms: float = 0.0, echo=print, protocol: str = "http", messages=None) -> dict:
    """``model`` None: the only model the server lists (HTTP; gRPC needs the name). Each concurrency level first
    runs its clients for ``warmup_ms`` (requests not counted), like the offline benchmark's warm-up."""
    if protocol not in PROTOCOLS:
        raise UserInputError(f"--protocol {protocol!r}: choose http or grpc")
    if duration_s <= 0 or not concurrency_levels or min(concurrency_levels) < 1:
        raise UserInputError("--duration-s must be positive and --concurrency a list of positive integers")
    if warmup_ms < 0:
        raise UserInputError("--warmup-ms must not be negative")
    host, port, prefix = _target(url, protocol)
    if protocol == "grpc":
        pb = _messages(messages)
        meta = _grpc_metadata(host, port, model, url, pb)
    else:
        model = model or served_model(url)
        status, meta = _get_json(host, port, "GET", f"{prefix}/v2/models/{urllib.parse.quote(model, safe='')}", url)
        if status != 200 or not isinstance(meta, dict):
            err = meta.get("error", meta) if isinstance(meta, dict) else meta
            raise UserInputError(f"{url} answered {status} for the metadata of model {model!r}: {err}")
    try:
        raw_name = str(meta["name"])
        name = urllib.parse.quote(raw_name, safe="")
        inp, out = meta["inputs"][0], meta["outputs"][0]
        shape = [batch, *(int(d) for d in inp["shape"][1:])]
    except (KeyError, IndexError, TypeError):
        raise UserInputError(f"{url}: the metadata of model {model!r} lacks inputs/outputs with shapes") from None
    rows = []
    for conc in concurrency_levels:
        lat: list[float] = []
        ends: list[float] = []
        errors = [0]
        lock = threading.Lock()
        measure_from = time.perf_counter() + warmup_ms / 1000.0
        stop = measure_from + duration_s

        def client(seed: int):
            dt = inp.get("datatype", "FP32")
            if protocol == "grpc":
                c = _GrpcClient(host, port, _grpc_request(raw_name, inp["name"], shape, out["name"], seed, dt, pb))
            else:
                c = _HttpClient(host, port, f"{prefix}/v2/models/{name}/infer",
                                *_request_body(inp["name"], shape, out["name"], seed, dt))
            mine, last = [], 0.0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                ok = c.infer()
                if t0 < measure_from:  # warm-up: not counted
                    continue
                if ok:
                    last = time.perf_counter()
                    mine.append((last - t0) * 1000)
                else:
                    with lock:
                        errors[0] += 1
            c.close()
            with lock:
                lat.extend(mine)
                ends.append(last)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = max(max(ends, default=stop) - measure_from, 1e-9)
        if not lat:
            raise UserInputError(f"no request to {url} succeeded at concurrency {conc} ({errors[0]} errors)")
        s = summarize(lat)
        row = {"concurrency": conc, "batch": batch, "requests": len(lat), "errors": errors[0],
               "throughput_ips": len(lat) * batch / elapsed, **s.as_dict()}
        rows.append(row)
        echo(f"  concurrency {conc:3d}: {row['throughput_ips']:8.1f} img/s  p50 {s.p50_ms:7.2f} ms  "
             f"p99 {s.p99_ms:7.2f} ms  errors {errors[0]}")
    return {"schema": "alexnet-deploy.loadgen/1", "server": url, "protocol": protocol, "model": raw_name,
            "duration_s": duration_s,
            "warmup_ms": warmup_ms, "rows": rows}
