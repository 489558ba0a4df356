"""Server hardening (issue 20): work bounded by the model, drain with keep-alive clients, header integers,
Triton protocol extensions, alexnet-serve's model check, and the one model contract every command checks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


# --- item 1: Resize(shorter) -> CenterCrop bounded by what the model needs -------------------------------------

def _record_resizes(monkeypatch, budget: int) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= budget, f"resize to {size} from {self.size}"  # before allocating gigabytes
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return sizes


@pytest.mark.parametrize("variant", ["cifar10", "torchvision"])
@pytest.mark.parametrize("shape", [(1, 200_000), (200_000, 1), (7, 9000)])
def test_extreme_aspect_ratio_costs_what_the_model_needs(monkeypatch, variant, shape):
    """A 1 x 200,000 image was resized to 32 x 6.4 M (614 MB) on cifar10 and 256 x 51 M (~40 GB) on the 224
    variants before the center crop: every resize must now stay within a few times the model's input."""
    from alexnet_deploy.models.specs import get_variant
    from alexnet_deploy.runtime.preprocess import model_pixels

    prep = get_variant(variant).preprocessing
    img = Image.new("RGB", shape, (200, 10, 60))
    sizes = _record_resizes(monkeypatch, budget=8 * prep.resize * prep.resize)
    px = model_pixels(img, prep)
    assert sizes and px.shape == (prep.crop, prep.crop, 3)
    assert (px == (200, 10, 60)).all()  # a flat image stays flat: the window is the right part of the image


def test_bounded_path_matches_the_exact_one_closely_and_normal_images_exactly():
    from alexnet_deploy.runtime.preprocess import EXACT_MAX_ASPECT, center_crop, resize_center_crop, resize_shorter

    rng = np.random.default_rng(0)
    # a smooth strip (photo-like): the bounded path samples the same window with the same filter
    yy, xx = np.mgrid[0:40, 0:900]
    strip = np.stack([(xx * 0.3) % 256, (yy * 5 + xx * 0.1) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    for arr in (strip, strip.transpose(1, 0, 2)):
        img = Image.fromarray(np.ascontiguousarray(arr))
        for size, crop in ((256, 224), (32, 32)):
            exact = np.asarray(center_crop(resize_shorter(img, size), crop)).astype(int)
            fast = np.asarray(resize_center_crop(img, size, crop)).astype(int)
            assert fast.shape == exact.shape and np.abs(fast - exact).max() <= 2
    for _ in range(20):  # up to EXACT_MAX_ASPECT the pixels are torchvision's, bit for bit
        w = int(rng.integers(20, 300))
        h = int(rng.integers(20, w * EXACT_MAX_ASPECT))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for interp in ("bilinear", "bicubic"):
            np.testing.assert_array_equal(np.asarray(resize_center_crop(img, 256, 224, interp)),
                                          np.asarray(center_crop(resize_shorter(img, 256, interp), 224)))


# --- a live server on a small graph (no training needed) ------------------------------------------------------

import gzip  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    pytest.importorskip("onnx")
    from helpers import make_model

    return make_model(tmp_path_factory.mktemp("small") / "small.onnx")


@pytest.fixture(scope="module")
def live(small_model):
    httpx = pytest.importorskip("httpx")
    import uvicorn

    from alexnet_deploy.runtime.runners import open_runner
    from alexnet_deploy.server.app import ServeOptions, create_app, server_config

    opts = ServeOptions(max_batch=8, max_queue_delay_ms=1, max_body_mb=0.5)
    runner = open_runner(small_model)
    port = _free_port()
    server = uvicorn.Server(server_config(create_app(runner, opts), opts, log_level="warning", host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    with open_runner(small_model) as ref:
        yield {"url": url, "host": f"127.0.0.1:{port}", "ref": ref, "meta": runner.metadata}
    server.should_exit = True
    thread.join(timeout=20)


def _x(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_class_count(live, binary):
    """tritonclient's classification extension: BYTES [N, k] "value:index:label", highest first (was ignored)."""
    import tritonclient.http as tc

    x = _x()
    logits = live["ref"].infer(x)
    client = tc.InferenceServerClient(live["host"])
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    res = client.infer("alexnet", [inp], outputs=[tc.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
    out = res.as_numpy("logits")
    assert out.shape == (3, 3) and res.get_output("logits")["datatype"] == "BYTES"
    labels = live["meta"].class_names
    for row, scores in zip(out, logits):
        want = np.argsort(-scores, kind="stable")[:3]
        got = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in row]
        assert [int(g[1]) for g in got] == list(want)
        assert [g[2] for g in got] == [labels[i] for i in want]
        np.testing.assert_allclose([float(g[0]) for g in got], scores[want], rtol=1e-5, atol=1e-6)
    # more classes than the model has: all of them, as Triton clamps
    res = client.infer("alexnet", [inp], outputs=[tc.InferRequestedOutput("logits", binary_data=binary, class_count=50)])
    assert res.as_numpy("logits").shape == (3, 10)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(live, algorithm):
    import tritonclient.http as tc

    x = _x(2, seed=1)
    client = tc.InferenceServerClient(live["host"])
    for binary in (True, False):
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = client.infer("alexnet", [inp], request_compression_algorithm=algorithm,
                           outputs=[tc.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(res.as_numpy("logits"), live["ref"].infer(x), rtol=1e-5, atol=1e-5)


def test_compressed_body_limit_applies_after_inflating(live):
    import httpx

    limit = int(0.5 * 1024 * 1024)
    big = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [0.0]}],
                      "id": " " * (2 * limit)}).encode()
    for enc, packed in (("gzip", gzip.compress(big)), ("deflate", zlib.compress(big))):
        assert len(packed) < limit // 10
        r = httpx.post(f"{live['url']}/v2/models/alexnet/infer", content=packed, headers={"Content-Encoding": enc})
        assert r.status_code == 413 and "inflates beyond" in r.json()["error"], r.text
    r = httpx.post(f"{live['url']}/v2/models/alexnet/infer", content=b"\x1f\x8b junk", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "corrupt" in r.json()["error"]
    r = httpx.post(f"{live['url']}/v2/models/alexnet/infer", content=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and "gzip" in r.json()["error"]


def test_model_config_and_statistics_extensions(live):
    """perf_analyzer and Triton tooling read /config and /stats (404 before)."""
    import tritonclient.http as tc
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2, service_pb2

    client = tc.InferenceServerClient(live["host"])
    meta = client.get_server_metadata()
    assert {"classification", "model_configuration", "statistics"} <= set(meta["extensions"])
    cfg = client.get_model_config("alexnet")
    parsed = json_format.ParseDict(cfg, model_config_pb2.ModelConfig())  # field names and types of the proto
    assert parsed.max_batch_size == 8 and parsed.platform == "onnxruntime_onnx"
    assert list(parsed.input[0].dims) == [3, 32, 32] and parsed.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(parsed.output[0].dims) == [10] and parsed.output[0].name == "logits"
    assert client.get_model_config("alexnet", "1") == cfg
    before = client.get_inference_statistics("alexnet")["model_stats"][0]
    x = _x(2, seed=2)
    for _ in range(3):
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("alexnet", [inp])
    stats = client.get_inference_statistics("alexnet")
    json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())
    s = stats["model_stats"][0]
    assert s["name"] == "alexnet" and s["version"] == "1"
    assert s["inference_count"] - before["inference_count"] == 6
    assert s["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert s["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert s["batch_stats"] and all(b["batch_size"] >= 1 for b in s["batch_stats"])
    assert client.get_inference_statistics()["model_stats"][0]["name"] == "alexnet"  # GET /v2/models/stats
    import httpx

    r = httpx.get(f"{live['url']}/v2/models/resnet/config")
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


# --- item 3: header integers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["\u00b3", "\u0663", "9" * 5000, "-1", "1 2", "", "0x10"])
def test_header_integers_are_ascii_digits(value):
    from alexnet_deploy.server.protocol import HEADER_LENGTH, ProtocolError, parse_infer_request

    with pytest.raises(ProtocolError) as info:
        parse_infer_request(b'{"inputs": []}', value)
    assert info.value.status == 400 and HEADER_LENGTH in str(info.value)


def test_header_integers_on_the_wire_are_400_without_traceback(live, caplog):
    import httpx

    for value in (b"\xb3", b"9" * 5000):
        r = httpx.post(f"{live['url']}/v2/models/alexnet/infer", content=b'{"inputs": []}',
                       headers={"Inference-Header-Content-Length": value})
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], r.text
    port = int(live["url"].rsplit(":", 1)[1])
    for value in (b"9" * 5000, b"\xb3", b"-1"):  # Content-Length: h11 or our reader, never a 500
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v2/models/alexnet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n{}")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data, data[:300]
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


# --- item 5: alexnet-serve opens the model first; artifact folders ---------------------------------------------

def test_serve_takes_an_artifact_folder(small_model, tmp_path, cli, monkeypatch):
    import shutil

    from alexnet_deploy.cli import serve_main
    from alexnet_deploy.server import app as server_app

    art = tmp_path / "deploy" / "onnx-fp32"
    art.mkdir(parents=True)
    shutil.copy(small_model, art / "model.onnx")
    (art / "manifest.json").write_text(json.dumps({"schema": "alexnet-deploy.artifact/1", "model": "model.onnx"}))
    (tmp_path / "deploy" / "golden").mkdir()
    served = []
    monkeypatch.setattr(server_app, "serve", lambda runner, opts, host, port, sock=None: served.append(runner))
    code, out, err = cli(serve_main, art, "--port", "0")
    assert code == 0, err
    assert served and served[0].is_active and f"serving {art / 'model.onnx'}" in out
    code, out, err = cli(serve_main, tmp_path / "deploy", "--port", "0")  # the deployment folder: which artifact?
    assert code == 2 and "onnx-fp32" in err and err.count("\n") == 1, err
    (art / "manifest.json").write_text(json.dumps({"schema": "alexnet-deploy.artifact/1", "model": "gone.onnx"}))
    code, out, err = cli(serve_main, art, "--port", "0")
    assert code == 2 and "gone.onnx" in err and "serving" not in out
