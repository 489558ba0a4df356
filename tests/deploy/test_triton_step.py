"""alexnet-deploy's triton/ step: runs after the bench steps, prefers the batch that measured best (and says which
measurement), and adds a tensorrt_plan model per engine the trt step built."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from alexnet_deploy.deploy.plan import DeployOptions, plan_steps
from helpers import deploy_opts, fake_plan, make_model, statuses


def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_is_planned_after_every_bench_step(tmp_path):
    opts = DeployOptions(weights=tmp_path / "w.pt", out=tmp_path / "dep", dataset="digits")
    names = [s.kind for s in plan_steps(opts, ("torch", "ort", "trt"))]
    assert names[-1] == "triton" and names.count("triton") == 1 and "bench" in names


def _bench_record(out: Path, artifact: str, rows: list[dict], indexed: bool = True) -> None:
    from alexnet_deploy.deploy.run import CHECK_SCHEMA, CHECKS, _index_record
    from alexnet_deploy.fileio import atomic_write_json, sha256_file

    path = out / CHECKS / f"{artifact}.bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"schema": CHECK_SCHEMA, "step": f"bench {artifact}", "cache_key": "k",
                             "status": "measured", "created_utc": "2026-01-01T00:00:00+00:00",
                             "result": {"rows": rows}})
    if indexed:
        _index_record(out, path.name, sha256_file(path))


def test_best_measured_batch_is_read_from_this_runs_bench_record(tmp_path):
    from alexnet_deploy.deploy.steps import Context, _best_measured

    opts = DeployOptions(weights=tmp_path / "w.pt", out=tmp_path, dataset="digits", batch_sizes=(1, 8, 32))
    ctx = Context(opts, "0" * 64, {"name": "digits"}, ("torch", "ort"))
    row = dict(mode="end-to-end", skipped=None)
    _bench_record(tmp_path, "onnx-fp32", [
        {**row, "engine": "ort", "batch": 1, "throughput_ips": 900.0},
        {**row, "engine": "ort", "batch": 8, "throughput_ips": 2100.0},
        {**row, "engine": "ort", "batch": 32, "throughput_ips": 2100.0},  # a tie: the smaller batch
        {**row, "engine": "ort", "batch": 64, "throughput_ips": 9e9, "mode": "images"},  # another mode
        {**row, "engine": "ort-cuda", "batch": 32, "throughput_ips": 9e9},  # another engine
        {**row, "engine": "ort", "batch": 4, "throughput_ips": None, "skipped": "no"}])
    best = _best_measured(ctx, "onnx-fp32", "ort")
    assert (best["batch"], best["throughput_ips"], best["record"]) == (8, 2100.0, "checks/onnx-fp32.bench.json")
    assert best["throughput_by_batch"] == {"1": 900.0, "8": 2100.0, "32": 2100.0}
    assert _best_measured(ctx, "onnx-fp32", "ort-cuda") is None  # not an engine of this plan
    _bench_record(tmp_path, "onnx-fp16", [{**row, "engine": "ort", "batch": 8, "throughput_ips": 1.0}], indexed=False)
    assert _best_measured(ctx, "onnx-fp16", "ort") is None  # not in checks/provenance.json: not trusted
    assert _best_measured(ctx, "onnx-int8", "ort") is None  # no record


def test_tensorrt_rtx_note_is_given_once_per_repository(tmp_path):
    from alexnet_deploy.deploy.plan import STEP_KINDS
    from alexnet_deploy.deploy.steps import Context
    from alexnet_deploy.exporter.triton import tensorrt_rtx_note

    out = tmp_path / "dep"
    opts = DeployOptions(weights=tmp_path / "w.pt", out=out, dataset="digits", precisions=("fp32", "fp16", "int8"),
                         batch_sizes=(1, 4), triton_kind="cpu")
    for p in opts.built_precisions:  # what the onnx and trt steps leave (engines built with TensorRT-RTX)
        (out / f"onnx-{p}").mkdir(parents=True)
        onnx = make_model(out / f"onnx-{p}" / "model.onnx")
        fake_plan(out / f"trt-{p}" / "model.plan", onnx)
        (out / f"trt-{p}" / "provenance.json").write_text("{}")
    said = []
    ctx = Context(opts, "0" * 64, {"name": "digits"}, ("ort", "trt"), echo=said.append)
    (step,) = [s for s in plan_steps(opts, ctx.engines) if s.kind == "triton"]
    result = STEP_KINDS["triton"].run(ctx, step, tmp_path / "stage")
    assert result["models"] == ["alexnet-fp32", "alexnet-fp16", "alexnet-int8", "alexnet-trt-fp32",
                                "alexnet-trt-fp16", "alexnet-trt-int8"]
    assert [s for s in said if "note:" in s] == ["    " + tensorrt_rtx_note(
        ["alexnet-trt-fp32", "alexnet-trt-fp16", "alexnet-trt-int8"], "tensorrt_rtx 1.7.1")]


@pytest.mark.slow
@pytest.mark.trt
def test_deploy_triton_repository_with_engines_and_measured_batches(digits_checkpoint, tmp_path):
    from alexnet_deploy.deploy.run import run_deploy

    opts = deploy_opts(digits_checkpoint, tmp_path / "dep", precisions=("fp32",), engines=("ort", "trt"),
                       batch_sizes=(1, 4))
    first = statuses(run_deploy(opts, echo=lambda *a: None))
    assert first["triton"] == "ran" and first["trt fp32"] == "ran", first
    out, repo = opts.out, opts.out / "triton" / "model_repository"
    assert sorted(p.name for p in repo.iterdir()) == ["alexnet-fp32", "alexnet-trt-fp32"]
    onnx_cfg, plan_cfg = _parse(repo / "alexnet-fp32/config.pbtxt"), _parse(repo / "alexnet-trt-fp32/config.pbtxt")
    assert onnx_cfg.platform == "onnxruntime_onnx" and plan_cfg.platform == "tensorrt_plan"
    assert plan_cfg.max_batch_size == 4 and plan_cfg.instance_group[0].kind == plan_cfg.instance_group[0].KIND_GPU
    assert (repo / "alexnet-trt-fp32/1/model.plan").read_bytes() == (out / "trt-fp32/model.plan").read_bytes()
    rows = json.loads((out / "checks/onnx-fp32.bench.json").read_text())["result"]["rows"]
    ort = {r["batch"]: r["throughput_ips"] for r in rows if r["engine"] == "ort" and r["mode"] == "end-to-end"}
    best = max(ort, key=lambda b: (ort[b], -b))
    assert list(onnx_cfg.dynamic_batching.preferred_batch_size) == [best]
    side = json.loads((out / "triton/manifest.json").read_text())
    src = side["dynamic_batching"]["alexnet-fp32"]["from"]
    assert src["record"] == "checks/onnx-fp32.bench.json" and src["batch"] == best and src["engine"] == "ort"
    # no GPU here: the engine is not measured, so its config keeps the --batch-sizes above 1 (today's rule)
    assert list(plan_cfg.dynamic_batching.preferred_batch_size) == [4]
    assert "no measurement of trt" in side["dynamic_batching"]["alexnet-trt-fp32"]["from"]
    assert side["tensorrt_models"]["alexnet-trt-fp32"]["engine"] == "../trt-fp32/model.plan"
    prov = json.loads((out / "triton/provenance.json").read_text())
    assert "alexnet-export triton trt-fp32/model.plan" in prov["command"] and "--name alexnet-trt-fp32" in prov["command"]

    again = statuses(run_deploy(opts, echo=lambda *a: None))
    assert again["triton"] == "reused", again
    # a rebuilt engine (another workspace: a new manifest) changes the triton step's key
    changed = statuses(run_deploy(dataclasses.replace(opts, workspace_mb=512), echo=lambda *a: None))
    assert changed["trt fp32"] == "ran" and changed["triton"] == "ran", changed
    assert changed["export fp32"] == "reused" and changed["bench onnx-fp32"] == "reused"
