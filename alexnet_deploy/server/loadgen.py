"""A load generator for v2 servers (like Triton's perf_analyzer): N concurrent clients send real v2 infer
requests with binary tensors for a fixed time; throughput and latency percentiles per concurrency."""
from __future__ import annotations

import json
import threading
import time
import urllib.parse

import numpy as np

from alexnet_deploy.benchmarks.stats import summarize
from alexnet_deploy.errors import UserInputError
from alexnet_deploy.server.protocol import HEADER_LENGTH


def _target(url: str) -> tuple[str, int, str]:
    u = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    if u.scheme != "http" or not u.hostname:
        raise UserInputError(f"--server {url!r}: give an http://HOST:PORT address")
    return u.hostname, u.port or 80, u.path.rstrip("/")


def _request_body(input_name: str, shape: list[int], output_name: str, seed: int) -> tuple[bytes, dict]:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    head = json.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes(), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def run_load(url: str, concurrency_levels: list[int], duration_s: float, model: str | None = None,
             batch: int = 1, echo=print) -> dict:
    import http.client

    if duration_s <= 0 or not concurrency_levels or min(concurrency_levels) < 1:
        raise UserInputError("--duration-s must be positive and --concurrency a list of positive integers")
    host, port, prefix = _target(url)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", f"{prefix}/v2/models/{model}" if model else f"{prefix}/v2/models/alexnet")
        resp = conn.getresponse()
        meta = json.loads(resp.read() or b"{}")
    except OSError as exc:
        raise UserInputError(f"cannot reach {url}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise UserInputError(f"{url} answered {resp.status} for the model metadata: {meta.get('error', meta)}")
    name = meta["name"]
    inp, out = meta["inputs"][0], meta["outputs"][0]
    shape = [batch, *inp["shape"][1:]]
    rows = []
    for conc in concurrency_levels:
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = time.perf_counter() + duration_s

        def client(seed: int):
            body, headers = _request_body(inp["name"], shape, out["name"], seed)
            c = http.client.HTTPConnection(host, port, timeout=30)
            mine = []
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    c.request("POST", f"{prefix}/v2/models/{name}/infer", body=body, headers=headers)
                    r = c.getresponse()
                    r.read()
                    ok = r.status == 200
                except OSError:
                    ok = False
                    c.close()
                    c = http.client.HTTPConnection(host, port, timeout=30)
                if ok:
                    mine.append((time.perf_counter() - t0) * 1000)
                else:
                    with lock:
                        errors[0] += 1
            c.close()
            with lock:
                lat.extend(mine)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        if not lat:
            raise UserInputError(f"no request to {url} succeeded at concurrency {conc} ({errors[0]} errors)")
        s = summarize(lat)
        row = {"concurrency": conc, "batch": batch, "requests": len(lat), "errors": errors[0],
               "throughput_ips": len(lat) * batch / elapsed, **s.as_dict()}
        rows.append(row)
        echo(f"  concurrency {conc:3d}: {row['throughput_ips']:8.1f} img/s  p50 {s.p50_ms:7.2f} ms  "
             f"p99 {s.p99_ms:7.2f} ms  errors {errors[0]}")
    return {"schema": "alexnet-deploy.loadgen/1", "server": url, "model": name, "duration_s": duration_s,
            "rows": rows}
