"""alexnet-serve against a real Triton front end (issue 21 §5), in one run.

    python -m alexnet_deploy.studies.serve_vs_triton MODEL.onnx [--json docs/benchmarks/serve-vs-triton.json]

Starts PyTriton (Triton's own ``tritonserver`` binary, Python backend; from its own venv, default
/work/.venv-pytriton, as a subprocess: studies/pytriton_server.py, started by studies/servers.py) serving MODEL
through an onnxruntime session with the same threads
(``@batch``, max batch 32, 2 ms queue delay, the model name alexnet-serve's ``--name auto`` gives the artifact),
and ``alexnet-serve --threads T --max-batch 32 --max-queue-delay-ms 2 --name auto`` on the same file. It checks
that both give the same logits, then drives both with alexnet-bench --server's load generator
(benchmarks/loadgen.py) at each concurrency over HTTP and gRPC, the two servers interleaved per concurrency (the
order alternates) so that the machine's changing load falls on both. Prints a table and writes JSON with the
machine (runtime.machine.machine_info), the load average around each pair, and what the same ONNX Runtime session
does alone at the batch each concurrency allows (``ort_ceiling``: a throughput goal above it is out of any front
end's reach).

Benchmarks are not tests: nothing here is run by pytest."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from alexnet_deploy.studies.servers import (PYTRITON_PYTHON, Server, free_port, pytriton_available,  # noqa: F401
                                            start_alexnet_serve, start_pytriton)


def served_name(url: str) -> str:
    from alexnet_deploy.benchmarks.loadgen import served_model

    return served_model(url)


def logits(url: str, name: str, x: np.ndarray) -> np.ndarray:
    """One binary v2 request with tritonclient.http (unchanged)."""
    import tritonclient.http as tch

    c = tch.InferenceServerClient(url.split("://", 1)[1])
    try:
        meta = c.get_model_metadata(name)
        i = tch.InferInput(meta["inputs"][0]["name"], list(x.shape), meta["inputs"][0]["datatype"])
        i.set_data_from_numpy(x, binary_data=True)
        out = meta["outputs"][0]["name"]
        return c.infer(name, [i], outputs=[tch.InferRequestedOutput(out, binary_data=True)]).as_numpy(out)
    finally:
        c.close()


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def compare(servers: dict, name: str, levels: list[int], protocols: list[str], duration_s: float,
            warmup_ms: float, echo=print) -> list[dict]:
    from alexnet_deploy.benchmarks.loadgen import run_load
    from alexnet_deploy.server.kserve_v2 import grpc_predict_v2_pb2

    rows, flip = [], False
    for proto in protocols:
        for conc in levels:
            order = ["alexnet-serve", "triton"][::-1 if flip else 1]
            flip = not flip
            pair = {"protocol": proto, "concurrency": conc, "order": order, "load_before": _load()}
            for label in order:
                s = servers[label]
                url = s.url if proto == "http" else f"grpc://127.0.0.1:{s.grpc_port}"
                r = run_load(url, [conc], duration_s, model=name, warmup_ms=warmup_ms, echo=lambda *_: None,
                             protocol=proto, messages=grpc_predict_v2_pb2)["rows"][0]
                pair[label] = {k: r[k] for k in ("requests", "errors", "throughput_ips", "p50_ms", "p99_ms")}
            pair["load_after"] = _load()
            pair["ratio"] = pair["alexnet-serve"]["throughput_ips"] / pair["triton"]["throughput_ips"]
            pair["p99_ratio"] = pair["alexnet-serve"]["p99_ms"] / pair["triton"]["p99_ms"]
            rows.append(pair)
            a, t = pair["alexnet-serve"], pair["triton"]
            echo(f"{proto:5s} c{conc:<3d} alexnet-serve {a['throughput_ips']:7.1f} img/s p99 {a['p99_ms']:7.1f} ms | "
                 f"triton {t['throughput_ips']:7.1f} img/s p99 {t['p99_ms']:7.1f} ms | {pair['ratio']:.2f}x "
                 f"(load {pair['load_before'][0]:.1f})")
    return rows


def ort_ceiling(model: Path, threads: int, batches: list[int], seconds: float = 2.0) -> dict[int, float]:
    """What the ONNX Runtime session behind both servers does alone at each batch size (img/s): alexnet-serve's
    own runner, same threads, intra-op spinning off, run back to back in this process while both servers idle.
    A server at concurrency c forms batches of at most min(c, max batch), so ceiling[min(c, 32)] bounds what
    either front end can reach there; a goal above it cannot be met by the front end."""
    from alexnet_deploy.runtime.runners.factory import open_runner

    out = {}
    with open_runner(str(model), "ort", threads=threads,
                     session_config={"session.intra_op.allow_spinning": "0"}) as runner:
        meta = runner.metadata
        for b in batches:
            rng = np.random.default_rng(0)
            x = (rng.integers(0, 256, (b, *meta.input_dims), dtype=np.uint8) if np.dtype(meta.input_dtype) == np.uint8
                 else rng.standard_normal((b, *meta.input_dims)).astype(np.float32))
            runner.infer(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                runner.infer(x)
                n += b
            out[b] = n / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="the ONNX file both servers serve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-ms", type=float, default=1000.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--triton-spinning", action="store_true",
                    help="let Triton's ORT session spin-wait (ORT's default; alexnet-serve turns it off)")
    ap.add_argument("--serve-arg", action="append", default=[], help="an extra alexnet-serve option (repeatable)")
    a = ap.parse_args(argv)
    from alexnet_deploy.runtime.machine import machine_info

    why = pytriton_available()
    if why:
        print(f"error: PyTriton cannot run: {why}", file=sys.stderr)
        return 2
    levels = [int(c) for c in a.concurrency.split(",")]
    protocols = a.protocols.split(",")
    with tempfile.TemporaryDirectory(prefix="serve-vs-triton-") as tmp:
        work = Path(tmp)
        ours = start_alexnet_serve(a.model, work, a.threads, tuple(a.serve_arg))
        theirs = None
        try:
            name = served_name(ours.url)
            theirs = start_pytriton(a.model, name, work, a.threads, spinning=a.triton_spinning)
            meta = json.loads(urllib.request.urlopen(f"{ours.url}/v2/models/{name}").read())
            shape = [4, *meta["inputs"][0]["shape"][1:]]
            rng = np.random.default_rng(0)
            x = (rng.integers(0, 256, shape, dtype=np.uint8) if meta["inputs"][0]["datatype"] == "UINT8"
                 else rng.standard_normal(shape).astype(np.float32))
            la, lt = logits(ours.url, name, x), logits(theirs.url, name, x)
            diff = float(np.abs(la - lt).max())
            print(f"model {a.model} as {name!r}: same logits from both servers (max abs diff {diff:g})")
            if diff > 1e-5:
                print(f"error: the servers disagree (max abs diff {diff:g})", file=sys.stderr)
                return 1
            machine = machine_info(a.threads)
            ceiling = ort_ceiling(a.model, a.threads, sorted({min(c, 32) for c in levels}))
            print("ONNX Runtime alone (the ceiling): " + ", ".join(f"batch {b} {v:.1f} img/s" for b, v in ceiling.items()))
            rows = compare({"alexnet-serve": ours, "triton": theirs}, name, levels, protocols, a.duration_s,
                           a.warmup_ms)
            for r in rows:
                r["ort_ceiling_batch"] = min(r["concurrency"], 32)
                r["ort_ceiling_ips"] = ceiling[r["ort_ceiling_batch"]]
                r["goal_above_ceiling"] = 1.2 * r["triton"]["throughput_ips"] > r["ort_ceiling_ips"]
            log_lines = sum(1 for _ in open(ours.log, errors="replace"))
        finally:
            ours.stop()
            if theirs is not None:
                theirs.stop()
    result = {"schema": "alexnet-deploy.serve-vs-triton/1", "model": str(a.model), "model_name": name,
              "input_shape": meta["inputs"][0]["shape"], "logits_max_abs_diff": diff,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "alexnet_serve": f"--threads {a.threads} --max-batch 32 --max-queue-delay-ms 2 " + " ".join(a.serve_arg),
              "triton": f"PyTriton, Python backend, @batch, max batch 32, 2 ms queue delay, ORT {a.threads} threads, "
                        f"intra-op spinning {'on' if a.triton_spinning else 'off'}",
              "ort_intra_op_spinning": {"alexnet-serve": False, "triton": a.triton_spinning},
              "duration_s": a.duration_s, "warmup_ms": a.warmup_ms, "alexnet_serve_log_lines": log_lines,
              "machine": machine, "rows": rows}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    print(f"\n{'proto':5s} {'conc':>4s} {'serve img/s':>11s} {'triton img/s':>12s} {'ratio':>6s} "
          f"{'serve p99':>9s} {'triton p99':>10s} {'load':>5s} {'ORT alone':>9s} {'1.2x Triton':>11s}")
    for r in rows:
        print(f"{r['protocol']:5s} {r['concurrency']:4d} {r['alexnet-serve']['throughput_ips']:11.1f} "
              f"{r['triton']['throughput_ips']:12.1f} {r['ratio']:6.2f} {r['alexnet-serve']['p99_ms']:9.1f} "
              f"{r['triton']['p99_ms']:10.1f} {r['load_before'][0]:5.1f} {r['ort_ceiling_ips']:9.1f} "
              f"{'above ORT' if r['goal_above_ceiling'] else 'reachable':>11s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
