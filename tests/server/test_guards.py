"""The connection guard on both request parsers (server/guard_httptools.py, server/guard_h11.py): the same
deadlines, head limit, JSON errors, keep-alive and pipelining, on a real uvicorn server over loopback sockets.
httptools runs on uvloop and h11 on asyncio's own loop (the default stack and the fallback one)."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

HEADER_S, BODY_S = 0.6, 0.6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    pytest.importorskip("onnx")
    from helpers import make_model

    return make_model(tmp_path_factory.mktemp("small") / "small.onnx")


@pytest.fixture(scope="module", params=[("httptools", "uvloop"), ("h11", "asyncio")], ids=["httptools-uvloop", "h11-asyncio"])
def guarded(request, small_model):
    parser, loop = request.param
    if parser == "httptools":
        pytest.importorskip("httptools")
        pytest.importorskip("uvloop")
    import uvicorn

    from alexnet_deploy.runtime.runners import open_runner
    from alexnet_deploy.server.app import ServeOptions, create_app, server_config

    opts = ServeOptions(max_batch=8, max_queue_delay_ms=1, header_timeout_s=HEADER_S, body_timeout_s=BODY_S,
                        http_parser=parser, loop=loop, access_log=False)
    runner = open_runner(small_model)
    port = _free_port()
    config = server_config(create_app(runner, opts), opts, log_level="warning", host="127.0.0.1", port=port)
    assert config.http.__name__ == {"httptools": "GuardedHttpToolsProtocol", "h11": "GuardedH11Protocol"}[parser]
    assert config.loop == loop
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if _read_all(s).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            time.sleep(0.05)
    yield {"parser": parser, "port": port, "meta": runner.metadata}
    server.should_exit = True
    thread.join(timeout=20)


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _infer_request(meta, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal((1, *meta.input_dims)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": meta.input_name, "shape": [1, *meta.input_dims], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = head + x.tobytes()
    return (f"POST /v2/models/alexnet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\n\r\n").encode() + body


def _responses(s: socket.socket, n: int, timeout: float = 10) -> list[tuple[int, bytes, bytes]]:
    """Read ``n`` Content-Length responses from a keep-alive connection."""
    s.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {len(out)} responses: {buf[:200]!r}")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(buf) < length:
            buf += s.recv(65536)
        out.append((int(head.split(b" ", 2)[1]), head, buf[:length]))
        buf = buf[length:]
    return out


def _json_error(data: bytes, status: int) -> str:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), data[:300]
    assert b"application/json" in head.lower() and b"connection: close" in head.lower(), head
    return json.loads(body)["error"]


def test_malformed_request_is_json_400(guarded):
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert _json_error(_read_all(s), 400)


@pytest.mark.parametrize("where", ["header", "url"])
def test_request_head_over_16_kib_is_refused(guarded, where):
    big = b"a" * 20_000
    raw = (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + big + b"\r\n\r\n" if where == "header"
           else b"GET /v2/health/live?q=" + big + b" HTTP/1.1\r\n\r\n")
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(raw)
        data = _read_all(s)
    status = 431 if guarded["parser"] == "httptools" else 400  # h11 reports its incomplete-event limit as malformed
    message = _json_error(data, status)
    assert guarded["parser"] == "h11" or "16384 bytes" in message, message


def test_a_head_near_the_limit_is_served(guarded):
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n")
        assert _responses(s, 1)[0][0] == 200


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nX-Slow: a"])
def test_a_head_that_does_not_arrive_in_time_is_408(guarded, sent):
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        t0 = time.perf_counter()
        s.sendall(sent) if sent else None
        s.settimeout(0.1)
        data = b""
        while time.perf_counter() - t0 < 5:  # dribble one byte per 0.1 s: every byte must not restart the clock
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if sent:
                    try:
                        s.sendall(b"a")
                    except OSError:
                        break
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elapsed = time.perf_counter() - t0
    assert "did not arrive" in _json_error(data, 408)
    assert HEADER_S - 0.05 <= elapsed < HEADER_S + 1.0, elapsed


def test_a_body_that_stalls_is_408_and_the_server_keeps_serving(guarded):
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(b"POST /v2/models/alexnet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        t0 = time.perf_counter()
        data = _read_all(s)
        elapsed = time.perf_counter() - t0
    assert "did not arrive" in _json_error(data, 408) and elapsed < BODY_S + 2.0, elapsed
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(_infer_request(guarded["meta"]))
        assert _responses(s, 1)[0][0] == 200


def test_keep_alive_pause_longer_than_the_head_deadline_is_not_a_timeout(guarded):
    """The head deadline runs from a request's first byte, not while a keep-alive connection waits between them."""
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(_infer_request(guarded["meta"], 1))
        assert _responses(s, 1)[0][0] == 200
        time.sleep(HEADER_S + 0.5)
        s.sendall(_infer_request(guarded["meta"], 2))
        assert _responses(s, 1)[0][0] == 200


def test_pipelined_and_split_requests(guarded):
    meta = guarded["meta"]
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=10) as s:
        s.sendall(_infer_request(meta, 3) + _infer_request(meta, 4) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        got = _responses(s, 3)
        assert [g[0] for g in got] == [200, 200, 200], got
        assert json.loads(got[0][2])["outputs"][0]["data"] != json.loads(got[1][2])["outputs"][0]["data"]
        raw = _infer_request(meta, 5)  # head and body in pieces, within the deadlines
        for i in range(0, len(raw), 1000):
            s.sendall(raw[i:i + 1000])
            time.sleep(0.02)
        assert _responses(s, 1)[0][0] == 200


def test_auto_parser_is_httptools_when_installed_else_h11(monkeypatch):
    import importlib.util

    from alexnet_deploy.server import connections
    from alexnet_deploy.server.connections import ConnectionLimits, guarded_protocol, http_parser

    real = importlib.util.find_spec
    assert http_parser("auto") == ("httptools" if real("httptools") is not None else "h11")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else real(name, *a))
    assert http_parser("auto") == "h11" and http_parser("httptools") == "httptools"
    assert guarded_protocol(ConnectionLimits(), "auto").__name__ == "GuardedH11Protocol"
    assert connections.PARSERS == ("auto", "httptools", "h11")


def test_auto_loop_is_uvloop_when_installed_else_asyncio(monkeypatch):
    import importlib.util

    from alexnet_deploy.server.app import LOOPS, event_loop

    real = importlib.util.find_spec
    assert event_loop("auto") == ("uvloop" if real("uvloop") is not None else "asyncio")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert event_loop("auto") == "asyncio" and event_loop("uvloop") == "uvloop" and LOOPS == ("auto", "uvloop", "asyncio")
