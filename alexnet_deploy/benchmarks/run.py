"""alexnet-bench: every requested engine and batch size in one process, one table, JSON for machines."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
from dataclasses import dataclass, field

from alexnet_deploy.benchmarks.harness import BenchConfig, Row, bench_bare_ort, bench_images, bench_runner
from alexnet_deploy.benchmarks.ceilings import ceilings
from alexnet_deploy.runtime.machine import machine_info
from alexnet_deploy.benchmarks.stats import summarize
from alexnet_deploy.benchmarks.tegrastats import TegraStats
from alexnet_deploy.benchmarks.tegrastats import summarize as power_summary
from alexnet_deploy.errors import InferenceError, MissingDependencyError, UserInputError
from alexnet_deploy.benchmarks import openvino as ov_bench
from alexnet_deploy.runtime.runners.factory import ENGINES as RUNNER_ENGINES
from alexnet_deploy.runtime.runners.factory import model_kind

log = logging.getLogger(__name__)
# Engines that run on the host CPU: the measured CPU ceilings apply to their rows (not to GPU rows).
# (openvino-nncf is not: its INT8 model is made in memory, so the file's weight bytes are not what it streams.)
CPU_ENGINES = ("ort", "torch", "openvino")
# The runtime's engines plus the bench-only OpenVINO reference engines (benchmarks/openvino.py).
ENGINES = {**RUNNER_ENGINES, **ov_bench.ENGINES}
# Which measured compute ceiling a row's precision runs on (INT8 QDQ and INT4 weight-only FC layers both
# compute in int8: QLinearConv, MatMulNBits at accuracy level 4).
COMPUTE_CEILING = {"fp32": "fp32_gemm_gflops", "fp16": "fp32_gemm_gflops", "int8": "int8_gemm_gops"}


class _Skip(Exception):
    """This engine does not apply to this model (a row marked skipped, with the reason)."""


@dataclass
class BenchResult:
    rows: list[Row] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    costs: dict = field(default_factory=dict)
    ceilings: dict | None = None  # measured roofline ceilings (machine.ceilings), None with --no-roofline

    def to_dict(self) -> dict:
        return {"schema": "alexnet-deploy.bench/1", "machine": self.machine, "config": self.config,
                "ceilings": self.ceilings, "costs": self.costs, "rows": [r.as_dict() for r in self.rows]}


def _open_openvino(model: str, engine: str, threads: int | None, siblings: list):
    """OpenVINO on the file; openvino-nncf: NNCF INT8 of the FP32 file on alexnet-calibrate's images."""
    from alexnet_deploy.errors import DatasetError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    if model_kind(model) != "onnx":
        raise _Skip(f"{engine} runs ONNX files")
    meta = read_onnx_metadata(model)
    if engine == "openvino":
        return ov_bench.OpenVinoRunner(model, meta, threads)
    if meta.precision != "fp32":
        raise _Skip(f"NNCF quantizes the FP32 model; {os.path.basename(model)} is {meta.precision}")
    try:
        src = ov_bench.calibration_source(meta, siblings)
        cal, held = ov_bench.load_sets(meta, src)
    except (DatasetError, UserInputError) as exc:
        raise _Skip(f"no calibration images for NNCF: {exc}") from None
    runner = ov_bench.OpenVinoRunner(model, meta, threads, calibration=cal.x)
    runner.info["calibration"] = {**cal.provenance(), "source": src["from"],
                                  "same_images_as_int8_model": (cal.fingerprint == src["data_sha256"])
                                  if src["data_sha256"] else None}
    runner.held, runner.fp32_meta = held, meta
    return runner


def _heldout(runner, model: str, threads: int | None) -> dict:
    """NNCF INT8 against OpenVINO FP32 of the same file on the held-out images alexnet-calibrate evaluates on."""
    held = runner.held
    with ov_bench.OpenVinoRunner(model, runner.fp32_meta, threads) as ref:
        fp32 = ref.infer_batches(held.x, 64)
    return ov_bench.agreement(runner.infer_batches(held.x, 64), fp32, held)


def _open(model: str, engine: str, threads: int | None, cuda_graph: bool = False, siblings: list | None = None):
    """A runner for ``engine`` on ``model``; torch engines on an ONNX model use its recorded PyTorch source."""
    from alexnet_deploy.runtime.runners.factory import open_runner

    if engine in ov_bench.ENGINES:
        return _open_openvino(model, engine, threads, siblings or [])
    kind = model_kind(model)
    if ENGINES[engine][0] == "checkpoint" and kind == "onnx":
        from alexnet_deploy.parity.run import reference_for
        from alexnet_deploy.runtime.metadata import read_onnx_metadata
        from alexnet_deploy.runtime.runners.torch_runner import TorchRunner

        meta = read_onnx_metadata(model)
        if meta.precision != "fp32":
            raise _Skip(f"torch runs the FP32 source; {os.path.basename(model)} is {meta.precision}")
        return TorchRunner(reference_for(meta, None, model), device="cuda" if engine == "torch-cuda" else "cpu", threads=threads)
    if engine == "trt":
        return open_runner(model, engine, cuda_graph=cuda_graph)
    return open_runner(model, engine, threads=threads)


def _bench_torch_cuda_device_only(runner, batch: int, cfg: BenchConfig):
    """CUDA-event timing of the forward pass alone (input already on the GPU)."""
    import torch

    x = [torch.randn(batch, *runner.metadata.input_shape, device="cuda") for _ in range(4)]
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    lat: list[float] = []
    with torch.inference_mode():
        end = time.perf_counter() + cfg.warmup_ms / 1000
        while time.perf_counter() < end:
            runner.model(x[0])
        torch.cuda.synchronize()
        stop = time.perf_counter() + (cfg.duration_s or 1e9)
        i = 0
        while (cfg.iterations and i < cfg.iterations) or (not cfg.iterations and time.perf_counter() < stop):
            starts[0].record()
            runner.model(x[i % 4])
            starts[1].record()
            starts[1].synchronize()
            lat.append(starts[0].elapsed_time(starts[1]))
            i += 1
    s = summarize(lat, cfg.windows, cfg.cv_threshold)
    return s, batch * 1000.0 / s.mean_ms


def run_bench(models: list[str], engines: list[str], cfg: BenchConfig, *, threads: int | None = None,
              baseline_engine: str | None = None, images_dir: str | None = None, overhead_check: bool = False,
              roofline: bool = True, cuda_graph: bool = False, echo=print) -> BenchResult:
    cfg.validate()
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UserInputError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    for m in models:
        if not os.path.isfile(m):
            raise UserInputError(f"model not found: {m}")
        model_kind(m)
    for e in engines:  # an optional package the user asked for: one line before any work, not a skipped row
        if e in ov_bench.ENGINES:
            ov_bench.require(e)
    siblings = _int8_siblings(models) if "openvino-nncf" in engines else {}
    files = None
    if images_dir:
        from alexnet_deploy.runtime.preprocess import find_images

        files = find_images([images_dir])
    result = BenchResult(machine=machine_info(threads),
                         config={"engines": engines, "batch_sizes": list(cfg.batch_sizes), "warmup_ms": cfg.warmup_ms,
                                 "duration_s": cfg.duration_s, "iterations": cfg.iterations,
                                 "threads": threads, "baseline": baseline_engine, "cuda_graph": cuda_graph})
    if roofline:
        result.ceilings = ceilings()
    for model in models:
        name = os.path.basename(model)
        if roofline and model_kind(model) == "onnx":
            from alexnet_deploy.benchmarks.cost import model_cost

            result.costs[name] = model_cost(model) | {"file_bytes": os.path.getsize(model)}
        for engine in engines:
            if ENGINES[engine][0] == "engine" and model_kind(model) != "engine":
                result.rows.append(Row(name, engine, "-", "-", 0, "end-to-end",
                                       skipped=f"{engine} runs serialized engines; build one with alexnet-export trt"))
                continue
            try:
                runner = _open(model, engine, threads, cuda_graph, siblings.get(model))
                runner.activate()
                info = dict(getattr(runner, "info", {}))
                if engine == "openvino-nncf":
                    info["heldout"] = _heldout(runner, model, threads)
                    echo(f"  {name}: NNCF INT8 vs OpenVINO FP32 on {info['heldout']['images']} held-out images: "
                         f"top-1 agreement {info['heldout']['top1_agreement']:.2%}")
            except (MissingDependencyError, InferenceError, _Skip) as exc:  # engine not available here: say so
                result.rows.append(Row(name, engine, "-", "-", 0, "end-to-end", skipped=str(exc)))
                echo(f"skipped {engine} on {name}: {exc}")
                continue
            precision = _precision_label(runner.metadata)
            try:
                for batch in cfg.batch_sizes:
                    if runner.max_batch is not None and not (runner.min_batch <= batch <= runner.max_batch):
                        raise UserInputError(f"batch {batch} is outside what {name} accepts "
                                             f"({runner.min_batch}..{runner.max_batch}); it was exported with a "
                                             "static batch: re-export with a dynamic batch or pick --batch-sizes")
                    with TegraStats() as tegra:
                        t0 = time.perf_counter()
                        summary, ips = bench_runner(runner, batch, cfg)
                        elapsed = time.perf_counter() - t0
                    row = Row(name, engine, runner.provider, precision, batch, "end-to-end", summary, ips)
                    row.extra.update(info)
                    if tegra.samples:
                        row.extra["power"] = power_summary(tegra.samples, int(ips * elapsed), elapsed)
                    result.rows.append(row)
                    echo(f"  {name:<28} {engine:<10} b{batch:<4} p50 {summary.p50_ms:8.3f} ms  {ips:9.1f} img/s")
                    if engine == "trt":  # device-side split of one run, CUDA events
                        from alexnet_deploy.runtime.preprocess import random_model_input

                        x = random_model_input(runner.metadata, batch)
                        stages = [runner.stage_times(x) for _ in range(20)]
                        row.extra.update({k: float(np.median([s[k] for s in stages])) for k in stages[0]})
                    if engine == "torch-cuda":
                        s, ips_d = _bench_torch_cuda_device_only(runner, batch, cfg)
                        result.rows.append(Row(name, engine, runner.provider, precision, batch, "device-only", s, ips_d))
                    if overhead_check and engine.startswith("ort"):
                        s, _ = bench_bare_ort(runner.session, runner.input_spec.name,
                                              (batch, *runner.metadata.input_dims), cfg, runner.metadata)
                        row.extra["bare_loop_p50_ms"] = s.p50_ms
                        row.extra["harness_overhead"] = summary.mean_ms / s.mean_ms - 1.0
                    if files:
                        s, ips_i = bench_images(runner, files, batch, cfg)
                        result.rows.append(Row(name, engine, runner.provider, precision, batch, "images", s, ips_i))
            finally:
                runner.deactivate()
    _add_ratios(result, baseline_engine)
    return result


def _int8_siblings(models: list[str]) -> dict[str, list]:
    """FP32 ONNX path -> metadata of the INT8 models of this run made from it (by the recorded source sha256)."""
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    onnx_models = [m for m in models if model_kind(m) == "onnx"]
    metas = {m: read_onnx_metadata(m) for m in onnx_models}
    out: dict[str, list] = {}
    for m in onnx_models:
        if metas[m].precision == "fp32":
            sha = sha256_file(m)
            out[m] = [metas[o] for o in onnx_models if metas[o].precision == "int8"
                      and metas[o].fp32_onnx_sha256 == sha]
    return out


def _add_ratios(result: BenchResult, baseline_engine: str | None) -> None:
    """Speed-up of each row over the baseline engine's row at the same batch and mode (FP32 model first)."""
    measured = [r for r in result.rows if r.summary]
    if not measured:
        return
    base_engine = baseline_engine or measured[0].engine
    for r in measured:
        candidates = [b for b in measured if b.engine == base_engine and b.batch == r.batch and b.mode == r.mode]
        candidates.sort(key=lambda b: (b.precision != "fp32", b.model != r.model))
        if candidates:
            base = candidates[0]
            r.extra["vs_baseline"] = base.summary.mean_ms / r.summary.mean_ms
            r.extra["baseline_row"] = base.key
        _add_roofline(r, result.costs.get(r.model), result.ceilings)


def _precision_label(meta) -> str:
    """The row's precision: the model's, plus ``/int4-fc`` for INT4 weight-only classifier layers."""
    fc = (meta.extra or {}).get("weights_fc") or {}
    return f"{meta.precision}/int4-fc" if fc.get("bits") == 4 and fc.get("layers_int4") else meta.precision


def _add_roofline(r: Row, cost: dict | None, ceil: dict | None) -> None:
    """Weight bytes per image, attainable rate and the fraction reached (CPU rows with a measured cost)."""
    if not cost or not ceil or not r.throughput or r.engine not in CPU_ENGINES or not cost.get("weight_bytes"):
        return
    from alexnet_deploy.benchmarks.cost import roofline

    key = COMPUTE_CEILING.get(r.precision.split("/")[0], "fp32_gemm_gflops")
    compute = ceil.get(key) or ceil["fp32_gemm_gflops"]
    if r.engine == "torch":  # PyTorch eager runs the FP32 source whatever the ONNX holds
        compute = ceil["fp32_gemm_gflops"]
    bandwidth = ceil["memory_bandwidth_gbs"]
    r.extra.update(roofline(cost["flops_per_image"], cost["weight_bytes"], r.batch, r.throughput, compute, bandwidth))
    r.extra["compute_ceiling"] = key
    if cost.get("layers"):
        from alexnet_deploy.benchmarks.cost import layered_roofline

        fp32 = ceil["fp32_gemm_gflops"]  # PyTorch eager runs the FP32 source: every layer at the FP32 rate
        kinds = {"fp32": fp32, "int8": fp32 if r.engine == "torch" else (ceil.get("int8_gemm_gops") or fp32)}
        r.extra.update(layered_roofline(cost["layers"], cost.get("other_weight_bytes", 0), r.batch, r.throughput,
                                        kinds, bandwidth))
