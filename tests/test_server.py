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
from alexnet_deploy.server.app import ServeOptions, create_app
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
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
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
    with Server(runner, ServeOptions(max_batch=16, max_queue_delay_ms=20, max_body_mb=1)) as s:
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
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]
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
