"""alexnet-serve under hostile clients, on 127.0.0.1, bounded in time.

The real CLI runs in a subprocess (its peak RSS is read from /proc); a second subprocess attacks it with
slow-loris connections (request heads and bodies trickled a byte at a time), 10k random-name 404s over
keep-alive connections, decompression-bomb and over-limit uploads, large real uploads that take real decode
time, and malformed bodies. Meanwhile this process plays a well-behaved client (every answer must be 200) and
a health prober that opens a new connection per probe (so it also crosses the connection cap).
"""
from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

HEALTH_P99_MS = 250  # the target is 50 ms (measured and reported); the bound leaves room for a shared 2-core CI box
METRICS_MAX_BYTES = 24_000
RSS_GROWTH_MAX_MB = 200  # peak during the attack, over the server's RSS before it
RSS_AFTER_MAX_MB = 100  # still held after it (no per-request state kept)
ATTACK_S = 10.0
MAX_CONNECTIONS = 32  # health keeps a reserve of 16 more
LORIS = 32  # slow clients: with the 5 keep-alive clients, over the cap, well within the reserve
MAX_PIXELS = 5_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header(w: int, h: int) -> bytes:
    """A small PNG whose header declares w x h pixels (the classic decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def png_pixels(w: int, h: int) -> bytes:
    """A real w x h RGB PNG (every pixel present, so it decodes fully), compressed to a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = (b"\0" + b"\x80" * (3 * w)) * h
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def strict_json(raw: bytes):
    def reject(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(raw, parse_constant=reject)


ATTACKER = r'''
import http.client, json, random, socket, sys, threading, time
port, duration, LORIS = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[4])
bodies = json.load(open(sys.argv[3]))
stop = time.time() + duration
out = {"not_found": 0, "not_404": [], "loris_closed": 0, "loris_408": 0, "loris_503": 0, "loris_max_s": 0.0, "bombs": {},
       "bomb_bad": [], "malformed": 0, "malformed_bad": [], "big_ok": 0, "big_bad": []}
lock = threading.Lock()

def flood(n, seed):
    rng = random.Random(seed)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        if time.time() > stop:
            break
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16))
        path = f"/v2/models/{name}" if rng.random() < 0.5 else f"/{name}/{name}"
        try:
            c.request("GET", path)
            r = c.getresponse(); body = r.read()
        except OSError as exc:
            c.close(); c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock: out["not_404"].append(f"{path}: {exc}")
            continue
        with lock:
            if r.status == 404 and "error" in json.loads(body):
                out["not_found"] += 1
            else:
                out["not_404"].append(f"{path}: {r.status}")

def loris(kind):
    while time.time() < stop:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(0.25)
        t0 = time.time()
        if kind == "body":
            s.sendall(b"POST /v2/models/alexnet/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
            drip = b" "
        else:
            drip = b"GET /v2/health/live HTTP/1.1\r\nX-Slow: " + b"a" * 4000
        got = b""
        i = 0
        while time.time() < stop + 5:
            try:
                s.send(drip[i % len(drip): i % len(drip) + 1]); i += 1
                data = s.recv(4096)
                if not data:
                    break
                got += data
            except socket.timeout:
                continue
            except OSError:
                break
        s.close()
        with lock:
            out["loris_closed"] += 1
            out["loris_max_s"] = max(out["loris_max_s"], time.time() - t0)
            if b" 408 " in got and b'"error"' in got:
                out["loris_408"] += 1
            if b" 503 " in got:
                out["loris_503"] += 1
        if b" 503 " in got:
            time.sleep(1.0)  # Retry-After

def post(c, path, body, headers=None):
    c.request("POST", path, body=body, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read()

def bombs():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < stop:
        for key in ("bomb_huge", "bomb_over", "big_png", "big_jpeg", "strip_tall", "strip_wide"):
            data = bytes.fromhex(bodies[key])
            try:
                status, body = post(c, "/models/alexnet/classify", data)
            except OSError as exc:
                c.close(); c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock: out["bomb_bad"].append(f"{key}: {exc}")
                continue
            with lock:
                out["bombs"][f"{key}:{status}"] = out["bombs"].get(f"{key}:{status}", 0) + 1
                if key.startswith("bomb") and (status != 413 or "MP" not in json.loads(body)["error"]):
                    out["bomb_bad"].append(f"{key}: {status} {body[:200]!r}")
                if key.startswith(("big", "strip")):
                    if status == 200: out["big_ok"] += 1
                    else: out["big_bad"].append(f"{key}: {status} {body[:200]!r}")

def malformed():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < stop:
        for body, headers in bodies["malformed"]:
            try:
                status, raw = post(c, "/v2/models/alexnet/infer", body.encode("latin-1"), headers)
            except OSError as exc:
                c.close(); c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock: out["malformed_bad"].append(str(exc))
                continue
            text = raw.decode("utf-8")
            ok = status == 400 and "error" in json.loads(text) and "object at 0x" not in text and "Error:" not in text
            with lock:
                out["malformed"] += 1
                if not ok: out["malformed_bad"].append(f"{status} {text[:200]}")

first = [threading.Thread(target=flood, args=(5000, i)) for i in range(2)]
first += [threading.Thread(target=bombs), threading.Thread(target=malformed)]
for t in first: t.start()
time.sleep(0.5)  # the keep-alive clients hold their connections before the slow clients fill the cap
slow = [threading.Thread(target=loris, args=("body" if i % 2 else "head",)) for i in range(LORIS)]
for t in slow: t.start()
for t in first + slow: t.join()
print(json.dumps(out))
'''


def _malformed_bodies() -> list[tuple[str, dict]]:
    ok = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}
    bad = [
        {"inputs": [{**ok, "shape": [True, 3, 32, 32]}]},
        {"inputs": [ok], "parameters": "x"},
        {"inputs": [{**ok, "parameters": "x"}]},
        {"inputs": [{**ok, "shape": [2**40, 2**40, 2**40, 1]}]},
        {"inputs": [ok, ok]},
        {"inputs": [ok], "outputs": [{"name": "nope"}]},
        {"inputs": [{**ok, "datatype": ["FP32"]}]},
        {"inputs": [{**ok, "data": [1e400] + [0.0] * 3071}]},
    ]
    out = [(json.dumps(b), {}) for b in bad]
    out.append(('{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', {}))
    head = json.dumps({"inputs": [{**ok, "data": None, "parameters": {"binary_data_size": 12288.0}}]})
    out.append((head + "\0" * 12288, {"Inference-Header-Content-Length": str(len(head))}))
    out.append(("\xff\xfe not json", {}))
    # header integers: "³" passes str.isdigit() and then int() raised; 5,000 digits trip Python's int limit
    for value in ("\u00b3", "9" * 5000, "-1", " 12 34"):
        out.append((head + "\0" * 12288, {"Inference-Header-Content-Length": value}))
    return out  # (a 5,000-digit Content-Length closes the connection: test_server_hardening sends it)


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _start(model: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    code = "from alexnet_deploy.cli import serve_main; serve_main()"
    with open(log, "w") as fh:  # a file, not a pipe nobody reads: the access log must never block the server
        proc = subprocess.Popen([sys.executable, "-c", code, str(model), "--port", str(port), *extra],
                                stdout=fh, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"alexnet-serve did not start: {log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc")
def test_hostile_clients(digits_onnx, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    grad = (np.add.outer(np.arange(2000), np.arange(2000)) % 256).astype(np.uint8)
    big = np.stack([grad, grad.T, (grad // 2 + rng.integers(0, 8, grad.shape, dtype=np.uint8))], -1)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(big).save(png, format="PNG")  # 4 MP, under the 5 MP limit: really decoded
    Image.fromarray(big).save(jpeg, format="JPEG", quality=85)
    bodies = {"bomb_huge": png_header(20000, 20000).hex(), "bomb_over": png_header(3000, 3000).hex(),
              # 0.2 MP, under every limit, < 1 KB: Resize(shorter side) made it 32 x 6.4 M pixels (614 MB) before the crop
              "strip_tall": png_pixels(1, 200_000).hex(), "strip_wide": png_pixels(200_000, 1).hex(),
              "big_png": png.getvalue().hex(), "big_jpeg": jpeg.getvalue().hex(), "malformed": _malformed_bodies()}
    bodies_file = tmp_path / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    port = _free_port()
    proc = _start(digits_onnx, port, tmp_path / "serve.log", "--max-pixels", str(MAX_PIXELS), "--max-connections", str(MAX_CONNECTIONS),
                  "--header-timeout-s", "1.5", "--body-timeout-s", "1.5", "--max-body-mb", "4")
    try:
        # Connections opened before the attack keep working (the cap applies to new connections).
        good = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        good.request("GET", "/v2/health/ready")
        good.getresponse().read()
        rss_before = _rss_kb(proc.pid, "VmRSS")
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        infer_body = head + x.tobytes()
        infer_headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}

        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(port), str(ATTACK_S), str(bodies_file),
                                     str(LORIS)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        good_status: list[int] = []
        health_ms: list[float] = []
        health_status: list[int] = []
        busy_new_conn: list[tuple[int, str | None, str]] = []
        stop = time.time() + ATTACK_S

        def well_behaved():
            while time.time() < stop:
                good.request("POST", "/v2/models/alexnet/infer", body=infer_body, headers=infer_headers)
                r = good.getresponse()
                r.read()
                good_status.append(r.status)
                time.sleep(0.02)

        t = threading.Thread(target=well_behaved)
        t.start()
        time.sleep(1.0)  # let the slow clients take their connections
        while time.time() < stop:
            path = "/v2/health/live" if len(health_ms) % 2 else "/v2/health/ready"
            t0 = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                health_status.append(r.status)
            except OSError as exc:
                health_status.append(-1)
                print("health probe failed:", exc)
            finally:
                c.close()
            health_ms.append((time.perf_counter() - t0) * 1000)
            if len(health_ms) % 20 == 10:  # a new non-health connection while the slow clients hold the cap
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    c.request("GET", "/v2/models/alexnet")
                    r = c.getresponse()
                    busy_new_conn.append((r.status, r.getheader("retry-after"), r.read().decode()))
                except OSError as exc:
                    busy_new_conn.append((-1, None, str(exc)))
                finally:
                    c.close()
            time.sleep(0.02)
        t.join()
        out, err = attacker.communicate(timeout=60)
        assert attacker.returncode == 0, err[-3000:]
        result = json.loads(out)
        peak_mb = (_rss_kb(proc.pid, "VmHWM") - rss_before) / 1024
        rss_after_mb = (_rss_kb(proc.pid, "VmRSS") - rss_before) / 1024
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read()
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "serve.log").read_text()

    p50, p99 = np.percentile(health_ms, [50, 99])
    report = (f"health p50 {p50:.1f} ms p99 {p99:.1f} ms max {max(health_ms):.1f} ms over {len(health_ms)} probes; "
              f"{result['not_found']} 404s; {result['loris_closed']} slow clients cut (max {result['loris_max_s']:.1f} s, "
              f"{result['loris_408']} with a 408, {result['loris_503']} sent away with 503 past the connection cap); good client {len(good_status)} requests; "
              f"peak RSS +{peak_mb:.0f} MB, after +{rss_after_mb:.0f} MB; /metrics {len(metrics)} bytes; "
              f"uploads {result['bombs']}; malformed {result['malformed']}")
    print(report)
    (tmp_path / "hostile.txt").write_text(report)
    assert good_status and set(good_status) == {200}, report
    assert set(health_status) == {200}, report
    assert p99 <= HEALTH_P99_MS, report
    # 10k are sent when the machine keeps up (a 2-core CI box does ~1000/s); 300 already prove the label bound
    assert result["not_found"] >= 2000 and not result["not_404"], (result["not_404"][:5], report)
    assert not result["bomb_bad"] and not result["big_bad"] and result["big_ok"] > 0, (result["bomb_bad"][:3], result["big_bad"][:3])
    assert not result["malformed_bad"] and result["malformed"] > 0, result["malformed_bad"][:5]
    assert result["bombs"].get("strip_tall:200") and result["bombs"].get("strip_wide:200"), result["bombs"]
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]  # nothing a client sends
    assert result["loris_closed"] >= LORIS and result["loris_max_s"] < 6, report
    assert result["loris_408"] > 0, report
    # while the slow clients hold the cap, a new connection gets health only: anything else is a JSON 503
    refused = [(s, ra, b) for s, ra, b in busy_new_conn if s != 200]
    assert refused and all(s == 503 and ra and "error" in strict_json(b) for s, ra, b in refused), busy_new_conn[:3]
    assert len(metrics) < METRICS_MAX_BYTES, report
    assert peak_mb < RSS_GROWTH_MAX_MB and rss_after_mb < RSS_AFTER_MAX_MB, report


def test_busy_port_is_one_line(digits_onnx, cli):
    from alexnet_deploy.cli import serve_main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, out, err = cli(serve_main, digits_onnx, "--port", s.getsockname()[1])
    assert code == 2 and err.count("\n") == 1 and "cannot listen on 127.0.0.1" in err and "--port" in err, err


def test_keep_alive_requests_are_not_held_by_nagle(digits_onnx, tmp_path):
    """h11 writes a response's head and body separately: without TCP_NODELAY on the accepted socket each
    keep-alive request waited for the client's delayed ACK (~40 ms, 24 requests/s on one connection)."""
    import socket

    from alexnet_deploy.server.connections import _set_nodelay

    listener = socket.socket()  # proto 0, like uvicorn's and ours: asyncio does not set TCP_NODELAY for it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()

    class Transport:
        def get_extra_info(self, name):
            return accepted if name == "socket" else None

    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        _set_nodelay(Transport())
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (client, accepted, listener):
            s.close()

    port = _free_port()
    proc = _start(digits_onnx, port, tmp_path / "serve.log")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t0 = time.perf_counter()
        for _ in range(100):
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
        elapsed = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert elapsed < 2.0, f"100 keep-alive health requests took {elapsed:.2f} s (Nagle + delayed ACK is ~4 s)"


DRAIN_CLIENTS = 64


@pytest.mark.parametrize("parser, loop", [("httptools", "auto"), ("h11", "asyncio")])
def test_sigterm_drain_loses_no_request_on_keep_alive_connections(digits_onnx, tmp_path, parser, loop):
    """SIGTERM while 64 keep-alive clients send binary tensors: uvicorn closed idle connections under the clients
    (64 reset of 446) and no response said Connection: close. Every request sent must now get an answer:
    200 (the last ones with Connection: close) or a JSON 503 with Connection: close and Retry-After."""
    import signal

    port = _free_port()
    proc = _start(digits_onnx, port, tmp_path / "serve.log", "--http-parser", parser, "--loop", loop)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body, headers = head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
    lock = threading.Lock()
    got = {"ok": 0, "ok_close": 0, "busy_close": 0, "other": [], "lost": []}
    signalled: list[float] = []
    ready = threading.Barrier(DRAIN_CLIENTS + 1)

    signal_sent = threading.Event()

    def client(i: int):
        idle = i % 8 == 0  # 8 of them are idle on an open connection when the signal comes; the rest send back to back
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.connect()
        ready.wait()
        while True:
            try:
                c.request("POST", "/v2/models/alexnet/infer", body, headers)
                r = c.getresponse()
                raw = r.read()
            except OSError as exc:  # sent on an open connection, never answered
                with lock:
                    got["lost"].append(f"{time.time() - signalled[0] if signalled else -1:+.2f} s: {exc!r}")
                return
            close = (r.getheader("connection") or "").lower() == "close"
            with lock:
                if r.status == 200:
                    got["ok"] += 1
                    got["ok_close"] += close
                elif r.status == 503 and close and r.getheader("retry-after") and "error" in strict_json(raw):
                    got["busy_close"] += 1
                else:
                    got["other"].append((r.status, close, raw[:200]))
            if close or r.status != 200:
                c.close()
                return
            if idle:
                signal_sent.wait(timeout=60)
                time.sleep(0.3)  # the drain has begun: this request must get a 503 with Connection: close

    threads = [threading.Thread(target=client, args=(i,)) for i in range(DRAIN_CLIENTS)]
    try:
        for t in threads:
            t.start()
        ready.wait(timeout=30)
        time.sleep(1.5)
        signalled.append(time.time())
        proc.send_signal(signal.SIGTERM)
        signal_sent.set()
        for t in threads:
            t.join(timeout=60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    drain_s = time.time() - signalled[0]
    report = f"{got['ok']} answered ({got['ok_close']} with Connection: close), {got['busy_close']} 503+close, " \
             f"{len(got['lost'])} lost, drain {drain_s:.1f} s"
    print(report)
    assert not got["lost"] and not got["other"], (report, got["lost"][:5], got["other"][:3])
    assert got["ok_close"] > 0 and got["busy_close"] >= DRAIN_CLIENTS // 8, report  # both drain paths
    assert got["ok_close"] + got["busy_close"] == DRAIN_CLIENTS, report  # every connection was told it ends
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), proc.returncode
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
