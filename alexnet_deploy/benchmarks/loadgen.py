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

# The client side of the v2 binary-tensor extension, spelled out as tritonclient does (a client does not import
# the server): the JSON header's length travels in this HTTP header, the tensor bytes follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"


def _target(url: str) -> tuple[str, int, str]:
    u = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    if u.scheme != "http" or not u.hostname:
        raise UserInputError(f"--server {url!r}: give an http://HOST:PORT address")
    return u.hostname, u.port or 80, u.path.rstrip("/")


def _request_body(input_name: str, shape: list[int], output_name: str, seed: int,
                  datatype: str = "FP32") -> tuple[bytes, dict]:
    rng = np.random.default_rng(seed)  # UINT8: raw pixels (a uint8-nhwc model); else normalized-looking floats
    x = (rng.integers(0, 256, shape, dtype=np.uint8) if datatype == "UINT8"
         else rng.standard_normal(shape).astype(np.float32))
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


def run_load(url: str, concurrency_levels: list[int], duration_s: float, model: str | None = None,
             batch: int = 1, warmup_ms: float = 0.0, echo=print) -> dict:
    """``model`` None: the only model the server lists. Each concurrency level first runs its clients for
    ``warmup_ms`` (requests not counted), like the offline benchmark's warm-up."""
    import http.client

    if duration_s <= 0 or not concurrency_levels or min(concurrency_levels) < 1:
        raise UserInputError("--duration-s must be positive and --concurrency a list of positive integers")
    if warmup_ms < 0:
        raise UserInputError("--warmup-ms must not be negative")
    host, port, prefix = _target(url)
    model = model or served_model(url)
    status, meta = _get_json(host, port, "GET", f"{prefix}/v2/models/{urllib.parse.quote(model, safe='')}", url)
    if status != 200 or not isinstance(meta, dict):
        err = meta.get("error", meta) if isinstance(meta, dict) else meta
        raise UserInputError(f"{url} answered {status} for the metadata of model {model!r}: {err}")
    try:
        name = urllib.parse.quote(str(meta["name"]), safe="")
        inp, out = meta["inputs"][0], meta["outputs"][0]
        shape = [batch, *inp["shape"][1:]]
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
            body, headers = _request_body(inp["name"], shape, out["name"], seed, inp.get("datatype", "FP32"))
            c = http.client.HTTPConnection(host, port, timeout=30)
            mine, last = [], 0.0
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
    return {"schema": "alexnet-deploy.loadgen/1", "server": url, "model": name, "duration_s": duration_s,
            "warmup_ms": warmup_ms, "rows": rows}
