"""The real server on a loopback port, talked to by real HTTP clients (tritonclient, httpx, http.client)."""
import asyncio
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from alexnet_deploy.runtime.runners import open_runner
from alexnet_deploy.server.app import ServeOptions, create_app, server_config
from alexnet_deploy.server.batcher import DynamicBatcher, QueueFull


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowRunner:
    """Wraps a runner and adds a delay per batch (to make queueing and shutdown observable)."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s, self.batches = inner, delay_s, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, x):
        self.batches.append(len(x))
        time.sleep(self.delay_s)
        return self.inner.infer(x)


class Server:
    def __init__(self, runner, options):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(runner, options)
        self.server = uvicorn.Server(server_config(self.app, options, log_level="warning", host="127.0.0.1",
                                                   port=self.port))
        self.server.config.timeout_graceful_shutdown = 10
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def server(digits_onnx):
    runner = SlowRunner(open_runner(digits_onnx), 0.0)
    with Server(runner, ServeOptions(max_batch=16, max_queue_delay_ms=20, max_body_mb=1, max_pixels=200_000)) as s:
        s.runner = runner
        yield s


def test_health_and_metadata(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in httpx.get(f"{server.url}/v2").json()["extensions"]
    meta = httpx.get(f"{server.url}/v2/models/alexnet").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert httpx.get(f"{server.url}/v2/models/alexnet/versions/1").json() == meta
    assert httpx.get(f"{server.url}/v2/models/alexnet/versions/1/ready").json()["ready"] is True
    r = httpx.get(f"{server.url}/v2/models/resnet")
    assert r.status_code == 404 and "unknown model 'resnet'" in r.json()["error"]


def test_standard_v2_client_binary_and_json(server, digits_onnx):
    import tritonclient.http as tc

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with open_runner(digits_onnx) as ref:
        expected = ref.infer(x)
    client = tc.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("alexnet")
    assert client.get_model_metadata("alexnet")["outputs"][0]["name"] == "logits"
    for binary in (True, False):
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = client.infer("alexnet", [inp], outputs=[tc.InferRequestedOutput("logits", binary_data=binary)],
                           request_id="req-7")
        assert res.get_response()["id"] == "req-7"
        np.testing.assert_allclose(res.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body, headers, status, message", [
    (b"{not json", {}, 400, "malformed JSON"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32",
                             "data": [0.0] * 3072}]}).encode(), {}, 400, "named 'input'"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32",
                             "data": [0.0] * 2352}]}).encode(), {}, 400, "must have shape [N, 3, 32, 32]"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "INT32",
                             "data": [0] * 3072}]}).encode(), {}, 400, "must be FP32"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                             "data": [0.0] * 10}]}).encode(), {}, 400, "10 values"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP99",
                             "data": [0.0]}]}).encode(), {}, 400, "unknown datatype"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, body, headers, status, message):
    r = httpx.post(f"{server.url}/v2/models/alexnet/infer", content=body, headers=headers)
    assert r.status_code == status and message in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_binary_size_mismatch(server):
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3072 * 4}}]}).encode()
    r = httpx.post(f"{server.url}/v2/models/alexnet/infer", content=head + b"\0" * 100,
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary bytes" in r.json()["error"]
    head2 = head.replace(b"12288", b"12000")
    r = httpx.post(f"{server.url}/v2/models/alexnet/infer", content=head2 + b"\0" * 12000,
                   headers={"Inference-Header-Content-Length": str(len(head2))})
    assert r.status_code == 400 and "does not match shape" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/alexnet/infer", content=head, headers={"Inference-Header-Content-Length": "99999"})
    assert r.status_code == 400


def test_oversized_body(server):
    r = httpx.post(f"{server.url}/v2/models/alexnet/infer", content=b"x" * (2 * 1024 * 1024))
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_classify_endpoint(server, digits_onnx):
    from alexnet_deploy.data.datasets import load_digits
    from alexnet_deploy.runtime.preprocess import preprocess_batch

    held = load_digits("heldout")
    with open_runner(digits_onnx) as ref:
        expected = str(int(ref.infer(preprocess_batch([held.image(5)], ref.metadata.preprocessing)).argmax()))
    buf = io.BytesIO()
    held.image(5).save(buf, format="PNG")
    r = httpx.post(f"{server.url}/models/alexnet/classify?top_k=3", content=buf.getvalue())
    assert r.status_code == 200 and len(r.json()["top"]) == 3
    assert r.json()["top"][0]["label"] == expected
    r = httpx.post(f"{server.url}/models/alexnet/classify", files={"image": ("d.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200
    r = httpx.post(f"{server.url}/models/alexnet/classify", content=b"definitely not an image")
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    r = httpx.post(f"{server.url}/models/alexnet/classify?top_k=many", content=buf.getvalue())
    assert r.status_code == 400


def test_concurrent_requests_are_batched(server):
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    before = len(server.runner.batches)

    def call(_):
        return httpx.post(f"{server.url}/v2/models/alexnet/infer", content=body, timeout=30)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, range(48)))
    assert all(r.status_code == 200 for r in responses)
    outs = [np.array(r.json()["outputs"][0]["data"]) for r in responses]
    assert all(np.allclose(o, outs[0], atol=1e-5) for o in outs)  # results split back to the right request
    batches = server.runner.batches[before:]
    assert sum(batches) == 48 and max(batches) > 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "alexnet_batch_size_bucket" in metrics and 'alexnet_requests_total{endpoint="infer",status="200"}' in metrics
    assert "alexnet_queue_seconds_count" in metrics


def test_load_generator(server, cli, tmp_path):
    from alexnet_deploy.cli import bench_main

    code, out, err = cli(bench_main, "--server", server.url, "--concurrency", "1,4", "--duration-s", "1",
                         "--json", tmp_path / "load.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "load.json").read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4] and all(r["requests"] > 0 and r["errors"] == 0 for r in rows)
    code, _, err = cli(bench_main, "--server", f"http://127.0.0.1:{_free_port()}", "--duration-s", "1")
    assert code == 2 and "cannot reach" in err


def test_queue_full_and_graceful_drain(digits_onnx):
    async def scenario():
        runner = SlowRunner(open_runner(digits_onnx).activate(), 0.2)
        b = DynamicBatcher(runner, max_batch=4, max_queue_delay_ms=1, max_queue=2)
        b.start()
        x = np.zeros((1, 3, 32, 32), np.float32)
        first = asyncio.ensure_future(b.submit(x))
        second = asyncio.ensure_future(b.submit(x))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(np.zeros((2, 3, 32, 32), np.float32))
        await b.drain()  # graceful: what was accepted still completes
        r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), timeout=1)
        assert r1.shape == r2.shape == (1, 10)
        with pytest.raises(QueueFull, match="shutting down"):
            await b.submit(x)

    asyncio.run(scenario())


def test_triton_repository(digits_onnx, tmp_path, cli):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from alexnet_deploy.cli import export_main

    code, out, err = cli(export_main, "triton", digits_onnx, "--repo", tmp_path / "repo", "--max-batch", "16",
                         "--preferred-batch", "4,8", "--instances", "2", "--kind", "cpu")
    assert code == 0, err
    root = tmp_path / "repo" / "alexnet"
    cfg = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert list(cfg.input[0].dims) == [3, 32, 32] and cfg.input[0].name == "input"
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [10]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8] and cfg.instance_group[0].count == 2
    assert (root / "1" / "model.onnx").read_bytes() == digits_onnx.read_bytes()
    assert (root / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    code, _, err = cli(export_main, "triton", digits_onnx, "--repo", tmp_path / "r2", "--preferred-batch", "64",
                       "--max-batch", "8")
    assert code == 2 and "preferred batch sizes" in err


def test_request_timeout_is_504_and_server_recovers(digits_onnx):
    runner = SlowRunner(open_runner(digits_onnx), 0.0)
    with Server(runner, ServeOptions(timeout_s=0.2, warmup=True)) as s:
        runner.delay_s = 0.6
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                       "data": [0.0] * 3072}]}).encode()
        r = httpx.post(f"{s.url}/v2/models/alexnet/infer", content=body, timeout=10)
        assert r.status_code == 504 and "did not finish" in r.json()["error"]
        runner.delay_s = 0.0
        time.sleep(0.7)
        assert httpx.post(f"{s.url}/v2/models/alexnet/infer", content=body, timeout=10).status_code == 200


def _strict(raw: bytes):
    def reject(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(raw, parse_constant=reject)


def _infer(server, payload, headers=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{server.url}/v2/models/alexnet/infer", content=body, headers=headers or {}, timeout=30)


_OK = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}


@pytest.mark.parametrize("payload, field", [
    ({"inputs": [{**_OK, "shape": [True, 3, 32, 32]}]}, "inputs[0].shape"),
    ({"inputs": [_OK], "parameters": "x"}, "parameters must be a JSON object"),
    ({"inputs": [{**_OK, "parameters": "x"}]}, "inputs[0].parameters"),
    ({"inputs": [{**_OK, "shape": [2**40, 2**40, 2**40, 1]}]}, "inputs[0].shape"),
    ({"inputs": [{**_OK, "shape": [2**62, 2**62, 0, 1], "data": []}]}, "inputs[0].shape"),
    ({"inputs": [_OK, _OK]}, "inputs[1].name"),
    ({"inputs": [_OK], "outputs": [{"name": "probabilities"}]}, "outputs[0].name"),
    ({"inputs": [_OK], "outputs": "logits"}, "outputs must be a list"),
    ({"inputs": [_OK], "outputs": [{"name": "logits", "parameters": {"binary_data": "yes"}}]}, "binary_data"),
    ({"inputs": [{**_OK, "datatype": ["FP32"]}]}, "inputs[0].datatype"),
    ({"inputs": [{**_OK, "data": [[1.0, 2.0], [3.0]]}]}, "inputs[0].data"),
    ({"inputs": [{**_OK, "data": [10**400] + [0.0] * 3071}]}, "inputs[0].data"),
    ({"inputs": [_OK], "id": {"x": 1}}, "id must be"),
    (b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [NaN]}]}', "NaN"),
    (b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [Infinity]}]}', "Infinity"),
    (json.dumps({"inputs": [{**_OK, "data": ["X"] + [0.0] * 3071}]}).replace('"X"', "1e400").encode(), "NaN or infinite"),
    ({"inputs": [{**_OK, "data": [float("nan")] + [0.0] * 3071}]}, "NaN"),
])
def test_malformed_fields_are_400_naming_the_field(server, payload, field):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()  # json.dumps writes NaN as NaN
    r = _infer(server, body)
    assert r.status_code == 400, r.text
    message = _strict(r.content)["error"]
    assert field in message, message
    assert "object at 0x" not in r.text and "Error" not in message and "Traceback" not in r.text


def test_binary_malformed_and_non_finite(server):
    def binary(x, size=None, dtype="FP32"):
        head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": dtype,
                                       "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
        return _infer(server, head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))})

    x = np.zeros((1, 3, 32, 32), np.float32)
    r = binary(x, size=float(x.nbytes))
    assert r.status_code == 400 and "binary_data_size must be a non-negative integer" in r.json()["error"]
    x[0, 0, 0, 0] = np.nan
    r = binary(x)
    assert r.status_code == 400 and "NaN or infinite" in r.json()["error"]
    x[0, 0, 0, 0] = np.inf
    assert binary(x).status_code == 400
    r = _infer(server, {"inputs": [_OK], "parameters": {"binary_data_output": 1}})
    assert r.status_code == 400 and "binary_data_output" in r.json()["error"]
    r = _infer(server, b'{"inputs": [' * 50_000)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_huge_finite_inputs_give_strict_json(server):
    """3e38 is finite in FP32 but may overflow in the model: the body is strict JSON either way."""
    r = _infer(server, {"inputs": [{**_OK, "data": [3e38] * 3072}]})
    body = _strict(r.content)  # never NaN / Infinity in a body
    assert r.status_code == 200 or (r.status_code == 400 and "binary_data" in body["error"])
    head = json.dumps({"inputs": [{**_OK, "data": [3e38] * 3072}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    r = _infer(server, head)
    assert r.status_code == 200  # raw IEEE values may be anything


def test_unknown_output_is_rejected_before_inference(server):
    before = len(server.runner.batches)
    r = _infer(server, {"inputs": [_OK], "outputs": [{"name": "nope"}]})
    assert r.status_code == 400 and "unknown output 'nope'" in r.json()["error"]
    assert len(server.runner.batches) == before


def test_metrics_labels_come_from_fixed_sets(server):
    import random

    rng = random.Random(0)
    names = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(20)) for _ in range(300)]
    with httpx.Client(base_url=server.url) as client:
        size_before = len(client.get("/metrics").content)
        for i, n in enumerate(names):
            r = client.get(f"/v2/models/{n}" if i % 3 else f"/{n}/{n}/x")
            assert r.status_code == 404 and "error" in r.json()
            client.post(f"/v2/models/{n}/versions/{n}/infer", content=b"{}")
        metrics = client.get("/metrics").text
    assert not any(n in metrics for n in names)
    assert 'alexnet_requests_total{endpoint="metadata",status="404"}' in metrics
    assert 'alexnet_requests_total{endpoint="unmatched",status="404"}' in metrics
    assert len(metrics) < size_before + 8_000  # new (route, status) pairs only, not one per name


def test_no_pages_that_need_the_internet(server):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = httpx.get(f"{server.url}{path}")
        assert r.status_code == 404 and "error" in r.json() and "cdn" not in r.text.lower()


def test_pixel_limit_is_checked_before_decoding(server):
    import struct
    import zlib

    from PIL import Image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    for w, h in ((20000, 20000), (12000, 12000), (600, 600)):  # the server's limit is 0.2 MP
        bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))
        r = httpx.post(f"{server.url}/models/alexnet/classify", content=bomb, timeout=30)
        assert r.status_code == 413, r.text
        assert "MP" in r.json()["error"] and "--max-pixels" in r.json()["error"]
    buf = io.BytesIO()
    Image.new("RGB", (400, 400), (10, 200, 30)).save(buf, format="JPEG")
    r = httpx.post(f"{server.url}/models/alexnet/classify", content=buf.getvalue(), timeout=30)
    assert r.status_code == 200 and len(r.json()["top"]) == 5
    r = httpx.post(f"{server.url}/models/alexnet/classify?top_k=0", content=buf.getvalue())
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_not_ready_and_busy_are_json_503_with_retry_after(digits_onnx):
    runner = SlowRunner(open_runner(digits_onnx), 0.0)
    with Server(runner, ServeOptions(max_queue=1, max_batch=1, max_queue_delay_ms=0)) as s:
        runner.delay_s = 0.5
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: _infer(s, {"inputs": [_OK]}), range(4)))
        busy = [r for r in responses if r.status_code == 503]
        assert busy and all(r.headers.get("retry-after") and "busy" in r.json()["error"] for r in busy)
        runner.delay_s = 0.0


def test_repository_index_and_bench_model_name_and_warmup(digits_onnx, cli, tmp_path):
    from alexnet_deploy.cli import bench_main

    runner = SlowRunner(open_runner(digits_onnx), 0.0)
    with Server(runner, ServeOptions(name="other")) as s:
        assert httpx.post(f"{s.url}/v2/repository/index").json() == [{"name": "other", "version": "1", "state": "READY"}]
        before = len(runner.batches)
        code, out, err = cli(bench_main, "--server", s.url, "--concurrency", "2", "--duration-s", "0.5",
                             "--warmup-ms", "500", "--json", tmp_path / "load.json")
        assert code == 0, err
        result = json.loads((tmp_path / "load.json").read_text())
        assert result["model"] == "other" and result["warmup_ms"] == 500
        row = result["rows"][0]
        served = sum(runner.batches[before:])
        assert served > row["requests"] + row["errors"]  # warm-up requests ran and were not counted
        code, _, err = cli(bench_main, "--server", s.url, "--model-name", "alexnet", "--duration-s", "0.2")
        assert code == 2 and "404" in err and "unknown model 'alexnet'" in err


def test_triton_names_kind_and_messages(digits_onnx, tmp_path, cli, monkeypatch):
    import onnx

    from alexnet_deploy.cli import export_main

    for bad in ("../../escaped", "a/b", "..", ".hidden", ""):
        code, _, err = cli(export_main, "triton", digits_onnx, "--repo", tmp_path / "repo", "--name", bad)
        assert code == 2 and "Triton model name" in err, err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "repo").exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible: the default instance kind is CPU
    code, out, err = cli(export_main, "triton", digits_onnx, "--repo", tmp_path / "repo", "--name", "digits-v1.2")
    assert code == 0, err
    assert "KIND_CPU" in (tmp_path / "repo" / "digits-v1.2" / "config.pbtxt").read_text() and "cpu instances" in out
    code, out, err = cli(export_main, "triton", digits_onnx, "--repo", tmp_path / "repo", "--kind", "gpu")
    assert code == 0 and "KIND_GPU" in (tmp_path / "repo" / "alexnet" / "config.pbtxt").read_text()
    bare = onnx.load(str(digits_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    code, _, err = cli(export_main, "triton", tmp_path / "bare.onnx", "--repo", tmp_path / "r3")
    assert code == 2 and "alexnet-export onnx" in err and "--variant" not in err


@pytest.mark.parametrize("raw", [b"NOT HTTP AT ALL\r\n\r\n",
                                 b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"])
def test_malformed_http_gets_json_400(server, raw):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = b"431" if b"X-Big" in raw else b"400"  # the head over 16 KiB (httptools, the default parser here)
    assert head.startswith(b"HTTP/1.1 " + status) and b"application/json" in head and "error" in _strict(body)


@pytest.mark.parametrize("flag, logged", [((), False), (("--access-log",), True)], ids=["default", "access-log"])
def test_access_log_is_off_unless_asked_for(digits_onnx, tmp_path, flag, logged):
    """alexnet-serve (the real CLI, HTTP + gRPC) writes uvicorn's line per request only with --access-log."""
    from alexnet_deploy.studies.servers import start_alexnet_serve

    with start_alexnet_serve(digits_onnx, tmp_path, threads=1, extra=flag) as srv:
        for _ in range(3):
            assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    log = srv.log.read_text()
    assert "serving " in log, log[-2000:]  # the startup line either way
    n = log.count('"GET /v2/health/ready HTTP/1.1" 200')  # ours and the launcher's readiness polls
    assert (n >= 3) if logged else (n == 0), log[-2000:]
