"""alexnet-serve --grpc-port: KServe v2 / Triton gRPC against the real tritonclient.grpc, the same answers as HTTP,
the hostile-input statuses, and the deployment manifests (deploy/k8s, deploy/docker) against the server's real
routes and options. The server runs as the real CLI in a subprocess, on 127.0.0.1."""
from __future__ import annotations

import http.client
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import kserve_schema, serve_params, serve_routes, unknown_fields

ROOT = Path(__file__).resolve().parents[2]
grpc = pytest.importorskip("grpc", reason="alexnet-serve --grpc-port needs grpcio ([serve] extra)")
tcg = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] ([dev] extra)")
tch = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] ([dev] extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class CliServer:
    def __init__(self, model: Path, log: Path, *extra: str):
        self.http_port, self.grpc_port = _free_port(), _free_port()
        code = "from alexnet_deploy.cli import serve_main; serve_main()"
        self.log = log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(model), "--port", str(self.http_port),
                                          "--grpc-port", str(self.grpc_port), *extra],
                                         stdout=fh, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if _get(self.http_port, "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            self.proc.kill()
            raise RuntimeError(f"alexnet-serve did not start: {log.read_text()[-2000:]}")
        self.grpc = tcg.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        self.http = tch.InferenceServerClient(f"127.0.0.1:{self.http_port}")
        deadline = time.time() + 20  # gRPC opens right after the HTTP side is ready
        while True:
            try:
                if self.grpc.is_server_ready():
                    break
            except tcg.InferenceServerException:
                if time.time() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> int:
        self.grpc.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(digits_onnx, tmp_path_factory):
    log = tmp_path_factory.mktemp("grpc") / "serve.log"
    s = CliServer(digits_onnx, log, "--name", "auto", "--max-batch", "16", "--max-queue-delay-ms", "20",
                  "--max-body-mb", "1")
    yield s
    s.stop()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def _status(fn):
    with pytest.raises(tcg.InferenceServerException) as info:
        fn()
    return info.value.status(), info.value.message()


def _input(x: np.ndarray, dtype: str = "FP32", name: str = "input"):
    i = tcg.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    return i


def test_health_and_metadata_match_http(server):
    name = "alexnet-fp32"  # --name auto: the name alexnet-deploy's Triton repository gives an FP32 ONNX model
    assert f"as '{name}'" in server.log.read_text() and f"grpc://127.0.0.1:{server.grpc_port}" in server.log.read_text()
    c = server.grpc
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name) and c.is_model_ready(name, "1")
    assert c.get_server_metadata(as_json=True)["name"] == "alexnet-deploy"
    meta = c.get_model_metadata(name, as_json=True)
    http_meta = server.http.get_model_metadata(name)
    assert meta["name"] == http_meta["name"] == name and meta["platform"] == http_meta["platform"]
    for kind in ("inputs", "outputs"):  # gRPC's JSON prints int64 shapes as strings
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[kind]] == http_meta[kind]
    assert _status(lambda: c.is_model_ready("alexnet"))[0] == "StatusCode.NOT_FOUND"
    status, message = _status(lambda: c.get_model_metadata("resnet"))
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'resnet'" in message and name in message
    assert _status(lambda: c.get_model_metadata(name, "7"))[0] == "StatusCode.NOT_FOUND"


def test_infer_matches_http_exactly(server, digits_onnx):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from alexnet_deploy.runtime.runners import open_runner

    name = "alexnet-fp32"
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    via_grpc = server.grpc.infer(name, [_input(x)], request_id="r1")
    assert via_grpc.get_response().id == "r1" and via_grpc.get_response().model_name == name
    hi = tch.InferInput("input", list(x.shape), "FP32")
    hi.set_data_from_numpy(x)
    via_http = server.http.infer(name, [hi]).as_numpy("logits")
    got = via_grpc.as_numpy("logits")
    assert got.shape == (3, 10) and got.dtype == np.float32
    assert got.tobytes() == via_http.tobytes()  # max abs 0.0
    with open_runner(digits_onnx) as ref:
        np.testing.assert_allclose(got, ref.infer(x), rtol=0, atol=1e-5)
    # typed contents (fp32_contents) instead of raw_input_contents: the same logits
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name=name)
        t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req, timeout=10)
        assert np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(3, 10).tobytes() == via_http.tobytes()
        req.inputs[0].contents.fp32_contents.pop()  # one value short
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0].contents.fp32_contents: 9215 values for shape [3, 3, 32, 32]" in info.value.details()
        # a malformed message (not protobuf) is INVALID_ARGUMENT, not INTERNAL
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()
    finally:
        channel.close()
    # Triton's classification extension, as the HTTP side answers it
    out = [tcg.InferRequestedOutput("logits", class_count=3)]
    hout = [tch.InferRequestedOutput("logits", class_count=3)]
    assert (server.grpc.infer(name, [_input(x)], outputs=out).as_numpy("logits").tolist()
            == server.http.infer(name, [hi], outputs=hout).as_numpy("logits").tolist())


def test_bad_input_statuses_name_the_field(server):
    c, name = server.grpc, "alexnet-fp32"
    x = np.zeros((2, 3, 32, 32), np.float32)
    status, message = _status(lambda: c.infer("alexnet", [_input(x)]))
    assert status == "StatusCode.NOT_FOUND" and "model_name: unknown model 'alexnet'" in message
    status, message = _status(lambda: c.infer(name, [_input(np.zeros((2, 3, 32, 31), np.float32))]))
    assert status == "StatusCode.INVALID_ARGUMENT" and message.startswith("inputs[0].shape:"), message
    status, message = _status(lambda: c.infer(name, [_input(x.astype(np.float64), "FP64")]))
    assert status == "StatusCode.INVALID_ARGUMENT" and message.startswith("inputs[0].datatype:"), message
    status, message = _status(lambda: c.infer(name, [_input(x, name="image")]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "one input named 'input'" in message
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    status, message = _status(lambda: c.infer(name, [_input(bad)]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "NaN" in message
    status, message = _status(lambda: c.infer(name, [_input(x)], outputs=[tcg.InferRequestedOutput("probs")]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "outputs[0].name" in message
    status, message = _status(lambda: c.infer(name, [_input(np.zeros((17, 3, 32, 32), np.float32))]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "max batch 16" in message
    # --max-body-mb 1 is the gRPC message limit too: 2 MB never reaches the model
    big = np.zeros((44, 3, 32, 32), np.float32)  # 540 KB: under the limit, over max batch
    assert _status(lambda: c.infer(name, [_input(big)]))[0] == "StatusCode.INVALID_ARGUMENT"
    huge = np.zeros((200, 3, 32, 32), np.float32)  # 2.4 MB
    assert _status(lambda: c.infer(name, [_input(huge)]))[0] == "StatusCode.RESOURCE_EXHAUSTED"
    assert c.is_server_ready()  # and the server still answers


def test_concurrent_grpc_requests_share_the_batcher(server):
    """Many one-image gRPC calls at once are coalesced by the HTTP side's batcher and counted in its statistics."""
    import queue

    name = "alexnet-fp32"
    before = server.http.get_inference_statistics(name)["model_stats"][0]
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    done: queue.Queue = queue.Queue()
    for _ in range(12):
        server.grpc.async_infer(name, [_input(x)], lambda result, error: done.put((result, error)))
    results = [done.get(timeout=30) for _ in range(12)]
    assert all(e is None for _, e in results), [e for _, e in results if e is not None][:1]
    first = results[0][0].as_numpy("logits")
    assert all(r.as_numpy("logits").tobytes() == first.tobytes() for r, _ in results)
    after = server.http.get_inference_statistics(name)["model_stats"][0]
    images = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    assert images == 12 and batches < 12, (images, batches)


def _counter(metrics: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_grpc_calls_count_in_the_http_route_metrics(server):
    """gRPC calls land in the same per-route series as HTTP (endpoint = the HTTP route's name, status = the
    HTTP status of the outcome), so /metrics shows the load whichever protocol carries it."""
    name = "alexnet-fp32"
    before = _get(server.http_port, "/metrics")[1].decode()
    x = np.zeros((2, 3, 32, 32), np.float32)
    for _ in range(3):
        server.grpc.infer(name, [_input(x)])
    _status(lambda: server.grpc.get_model_metadata("resnet"))
    _status(lambda: server.grpc.infer(name, [_input(np.zeros((1, 3, 8, 8), np.float32))]))
    server.grpc.is_server_live()
    after = _get(server.http_port, "/metrics")[1].decode()
    for labels, n in ((("infer", "200"), 3), (("metadata", "404"), 1), (("infer", "400"), 1), (("live", "200"), 1)):
        got = _counter(after, "alexnet_requests_total", endpoint=labels[0], status=labels[1]) - \
            _counter(before, "alexnet_requests_total", endpoint=labels[0], status=labels[1])
        assert got == n, (labels, got)
    hist = _counter(after, "alexnet_request_latency_seconds_count", endpoint="infer") - \
        _counter(before, "alexnet_request_latency_seconds_count", endpoint="infer")
    assert hist == 4, hist


def test_bench_drives_the_grpc_endpoint(server, cli, tmp_path):
    """alexnet-bench --server grpc://... --protocol grpc: KServe v2 ModelInfer load, counted by the server."""
    from alexnet_deploy.cli import bench_main

    before = _get(server.http_port, "/metrics")[1].decode()
    out_json = tmp_path / "grpc.json"
    code, out, err = cli(bench_main, "--server", f"grpc://127.0.0.1:{server.grpc_port}", "--protocol", "grpc",
                         "--model-name", "alexnet-fp32", "--concurrency", "2", "--duration-s", "0.5",
                         "--json", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    row = result["rows"][0]
    assert result["protocol"] == "grpc" and row["concurrency"] == 2 and row["requests"] > 0 and row["errors"] == 0
    after = _get(server.http_port, "/metrics")[1].decode()
    served = _counter(after, "alexnet_requests_total", endpoint="infer", status="200") - \
        _counter(before, "alexnet_requests_total", endpoint="infer", status="200")
    assert served >= row["requests"], (served, row["requests"])
    code, _, err = cli(bench_main, "--server", f"grpc://127.0.0.1:{server.grpc_port}", "--protocol", "grpc",
                       "--duration-s", "0.2")
    assert code == 2 and "--model-name" in err and err.count("\n") == 1, err
    code, _, err = cli(bench_main, "--server", f"http://127.0.0.1:{server.grpc_port}", "--protocol", "grpc",
                       "--model-name", "alexnet-fp32", "--duration-s", "0.2")
    assert code == 2 and "grpc://HOST:PORT" in err, err


def test_typed_uint_contents_are_range_checked():
    """UINT8 models take uint_contents (uint32 on the wire): a value over 255 is refused, not wrapped."""
    from tritonclient.grpc import service_pb2

    from alexnet_deploy.server.grpc_service import to_v2_body
    from alexnet_deploy.server.protocol import ProtocolError, parse_infer_request

    req = service_pb2.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="input", datatype="UINT8", shape=[1, 2, 2, 3])
    t.contents.uint_contents.extend(range(12))
    parsed = parse_infer_request(*to_v2_body(req))
    x = parsed.inputs["input"]
    assert x.dtype == np.uint8 and x.shape == (1, 2, 2, 3) and x.ravel().tolist() == list(range(12))
    t.contents.uint_contents[5] = 256
    with pytest.raises(ProtocolError, match=r"inputs\[0\].contents.uint_contents: values outside the UINT8"):
        to_v2_body(req)
    req2 = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 11])
    req2.inputs.add(name="input", datatype="UINT8", shape=[1, 2, 2, 3])
    with pytest.raises(ProtocolError, match=r"raw_input_contents\[0\]: 11 bytes for shape \[1, 2, 2, 3\]"):
        to_v2_body(req2)
    req3 = service_pb2.ModelInferRequest(model_name="m")
    req3.inputs.add(name="input", datatype="FP16", shape=[1])
    with pytest.raises(ProtocolError, match="FP16 travels only in raw_input_contents"):
        to_v2_body(req3)


def test_busy_grpc_port_is_one_line(digits_onnx, cli):
    from alexnet_deploy.cli import serve_main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, out, err = cli(serve_main, digits_onnx, "--port", "0", "--grpc-port", s.getsockname()[1])
    assert code == 2 and err.count("\n") == 1 and "cannot listen for gRPC on 127.0.0.1" in err, err
    assert "--grpc-port" in err, err


# ---- deployment manifests: their ports, probes and arguments are alexnet-serve's real ones ----

def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "Deployment":
        return spec["template"]["spec"]["containers"]
    if doc["kind"] == "InferenceService":
        return spec["predictor"].get("containers", [])
    return []


def test_k8s_manifests_match_the_server():
    yaml = pytest.importorskip("yaml", reason="parses deploy/k8s with PyYAML ([dev] extra)")
    routes = serve_routes()
    docs = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(path.name, doc["kind"], doc["metadata"]["name"])] = doc
    kinds = {k[1] for k in docs}
    assert {"InferenceService", "Deployment", "Service"} <= kinds, kinds
    checked = 0
    for (fname, kind, _), doc in docs.items():
        for c in _containers(doc):
            cmd = c.get("command", []) + c.get("args", [])
            assert cmd[0] == "alexnet-serve", (fname, cmd)
            params = serve_params(cmd[1:])
            assert params["host"] == "0.0.0.0" and params["name"] == "auto", (fname, params)
            ports = {p["containerPort"]: p for p in c.get("ports", [])}
            http_port, grpc_port = params["port"], params["grpc_port"]
            if kind == "InferenceService":  # KServe: HTTP on 8080, gRPC on 8081 (h2c); one declared port each
                assert (http_port, grpc_port) == (8080, 8081), (fname, params)
                assert len(ports) <= 1
                if ports:
                    ((port, p),) = ports.items()
                    assert (port, p["name"]) in ((8080, "h1"), (8081, "h2c")), (fname, p)
            else:
                assert set(ports) == {http_port, grpc_port}, (fname, ports)
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe not in c:
                    continue
                get = c[probe]["httpGet"]
                assert get["path"] in routes and get["path"].startswith("/v2/health/"), (fname, probe, get)
                assert get["port"] == http_port, (fname, probe, get)
            checked += 1
        if kind == "Service":
            deployment = [d for (f, k, _), d in docs.items() if k == "Deployment" and f == fname]
            (dep,) = deployment
            (c,) = _containers(dep)
            named = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert doc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
            for sp in doc["spec"]["ports"]:
                target = sp["targetPort"]
                assert (named[target] if isinstance(target, str) else target) in named.values(), sp
        if kind == "InferenceService" and "triton" in doc["spec"]["predictor"]:
            triton = doc["spec"]["predictor"]["triton"]
            assert triton["storageUri"] and triton["protocolVersion"] == "v2"
    assert checked >= 3


def test_dockerfile_matches_the_server():
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    final = lines[lines.index(froms[-1]):]
    user = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0"), user
    pips = " ".join(ln for ln in lines if "pip" in ln)
    extras = set(re.findall(r"\[([a-z0-9,-]+)\]", pips))
    assert extras == {"runtime,serve"}, extras  # no torch, no build tools in the image
    entry = json.loads(next(ln for ln in final if ln.upper().startswith("ENTRYPOINT ")).split(None, 1)[1])
    cmd = json.loads(next(ln for ln in final if ln.upper().startswith("CMD ")).split(None, 1)[1])
    assert entry[0] == "alexnet-serve"
    params = serve_params(entry[1:] + cmd)
    expose = {int(p) for ln in final if ln.upper().startswith("EXPOSE ") for p in ln.split()[1:]}
    assert expose == {params["port"], params["grpc_port"]} and params["host"] == "0.0.0.0"
    health = next(ln for ln in final if ln.upper().startswith("HEALTHCHECK "))
    url = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\S+?)['\"]", health)
    assert url and int(url.group(1)) == params["port"] and url.group(2) in serve_routes(), health
    assert shlex.split(health)  # well-formed


def test_inferenceservices_validate_against_kserves_crd_schema():
    """KServe's own CRD schema (tests/data, extracted from kserve's config/crd/full at the commit it names)."""
    yaml = pytest.importorskip("yaml", reason="parses deploy/k8s with PyYAML ([dev] extra)")
    jsonschema = pytest.importorskip("jsonschema", reason="validates against KServe's CRD schema")
    schema = kserve_schema()
    isvcs = [doc for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
             for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == "InferenceService"]
    assert len(isvcs) == 3
    validator = jsonschema.Draft7Validator(schema)  # validate() would re-check the 600 KB schema on each call
    for doc in isvcs:
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        validator.validate(doc)
        assert unknown_fields(doc, schema) == [], doc["metadata"]["name"]
    # the checker itself: a misspelt field and a wrong type are caught
    bad = json.loads(json.dumps(isvcs[0]))
    bad["spec"]["predictor"]["containers"][0]["readinesProbe"] = {}
    assert unknown_fields(bad, schema) == [".spec.predictor.containers[0].readinesProbe"]
    bad["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
