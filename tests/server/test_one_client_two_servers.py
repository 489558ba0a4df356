"""One client, two servers (issue 21 §2): a client written against ``alexnet-serve`` runs against Triton with its
URL changed and nothing else.

The cifar10 model is exported with ``alexnet-export onnx``, its Triton repository written with ``alexnet-export
triton``, and that repository's config.pbtxt (parsed with Triton's own model_config_pb2) is what a real
``tritonserver`` serves: PyTriton's (it loads Python-backend models only), bound with the config's model name,
input/output names, dims, max_batch_size and queue delay, an onnxruntime session on the repository's model.onnx
behind it (studies/servers.py + studies/pytriton_server.py, the launcher the serve-vs-Triton study uses).
``alexnet-serve`` serves the same file with its default ``--name``. ONE client function (tritonclient.http and
tritonclient.grpc: metadata, binary infer) runs against both: same metadata, identical logits (max abs 0).

Needs PyTriton's venv (made with Debian's /usr/bin/python3): ALEXNET_DEPLOY_PYTRITON_PYTHON, default
/work/.venv-pytriton/bin/python; skipped with the command that makes it when it is missing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tch = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] ([dev] extra)")
tcg = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] ([dev] extra)")
pytest.importorskip("grpc", reason="alexnet-serve --grpc-port needs grpcio ([serve] extra)")

from alexnet_deploy.studies.servers import (PYTRITON_PYTHON, TritonModel, pytriton_available,  # noqa: E402
                                            start_alexnet_serve, start_pytriton)

pytestmark = pytest.mark.slow


def _export(*args) -> None:
    code = "from alexnet_deploy.cli import export_main; export_main()"
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def client(http_address: str, grpc_address: str, model: str, input_name: str, output_name: str,
           batches: list[np.ndarray]) -> dict:
    """What a user's client does, over both protocols: model metadata, then binary-tensor inference of each batch.
    Only the addresses change between servers."""
    out = {}
    h = tch.InferenceServerClient(http_address)
    try:
        m = h.get_model_metadata(model)
        out["http_meta"] = {"name": m["name"],
                            "inputs": [(t["name"], t["datatype"], list(t["shape"])) for t in m["inputs"]],
                            "outputs": [(t["name"], t["datatype"], list(t["shape"])) for t in m["outputs"]]}
        logits = []
        for x in batches:
            i = tch.InferInput(input_name, list(x.shape), "FP32")
            i.set_data_from_numpy(x, binary_data=True)
            r = h.infer(model, [i], outputs=[tch.InferRequestedOutput(output_name, binary_data=True)])
            logits.append(r.as_numpy(output_name))
        out["http_logits"] = logits
    finally:
        h.close()
    g = tcg.InferenceServerClient(grpc_address)
    try:
        m = g.get_model_metadata(model)
        out["grpc_meta"] = {"name": m.name,
                            "inputs": [(t.name, t.datatype, list(t.shape)) for t in m.inputs],
                            "outputs": [(t.name, t.datatype, list(t.shape)) for t in m.outputs]}
        logits = []
        for x in batches:
            i = tcg.InferInput(input_name, list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            r = g.infer(model, [i], outputs=[tcg.InferRequestedOutput(output_name)])
            logits.append(r.as_numpy(output_name))
        out["grpc_logits"] = logits
    finally:
        g.close()
    return out


def test_one_client_runs_unchanged_against_alexnet_serve_and_tritonserver(tmp_path):
    why = pytriton_available()
    if why:
        pytest.skip(f"PyTriton's tritonserver cannot run here: {why} (ALEXNET_DEPLOY_PYTRITON_PYTHON names another "
                    f"interpreter; looked for {PYTRITON_PYTHON})")
    onnx = tmp_path / "c10.onnx"
    _export("onnx", "--variant", "cifar10", "--output", onnx)
    _export("triton", onnx, "--repo", tmp_path / "repo")  # its default --name, like alexnet-serve's below
    configs = list((tmp_path / "repo").glob("*/config.pbtxt"))
    assert len(configs) == 1, configs
    cfg = TritonModel.from_config_pbtxt(configs[0])
    model_file = configs[0].parent / "1" / "model.onnx"
    assert model_file.is_file()
    assert cfg.input_dtype == "TYPE_FP32" and cfg.max_batch >= 2 and len(cfg.output_dims) == 1

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, *cfg.input_dims)).astype(np.float32) for n in (1, 3, cfg.max_batch)]
    results = {}
    # one ORT thread each: the same kernels, so the same bits; and the 2 shared cores stay usable
    with start_alexnet_serve(model_file, tmp_path, threads=1, name=None,
                             max_batch=cfg.max_batch, queue_delay_ms=cfg.queue_delay_us / 1000) as ours:
        results["alexnet-serve"] = client(f"127.0.0.1:{ours.http_port}", f"127.0.0.1:{ours.grpc_port}", cfg.name,
                                          cfg.input_name, cfg.output_name, batches)
    with start_pytriton(model_file, cfg, tmp_path, threads=1) as triton:
        results["tritonserver"] = client(f"127.0.0.1:{triton.http_port}", f"127.0.0.1:{triton.grpc_port}", cfg.name,
                                         cfg.input_name, cfg.output_name, batches)

    ours, theirs = results["alexnet-serve"], results["tritonserver"]
    want = {"name": cfg.name, "inputs": [(cfg.input_name, "FP32", [-1, *cfg.input_dims])],
            "outputs": [(cfg.output_name, "FP32", [-1, *cfg.output_dims])]}
    for side in (ours, theirs):  # the exported config's interface, over both protocols, from both servers
        assert side["http_meta"] == want
        assert side["grpc_meta"] == want
    for proto in ("http", "grpc"):
        for x, a, t in zip(batches, ours[f"{proto}_logits"], theirs[f"{proto}_logits"]):
            assert a.shape == t.shape == (len(x), *cfg.output_dims)
            assert a.dtype == t.dtype == np.float32
            assert float(np.abs(a - t).max()) == 0.0, f"{proto}: batch {len(x)} differs"
    for x, a, t in zip(batches, ours["http_logits"], ours["grpc_logits"]):
        assert np.array_equal(a, t)
