"""`alexnet-bench` command."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from alexnet_deploy.cli.common import (
    _handle_errors,
    _int_list,
    _setup_logging,
)
from alexnet_deploy.errors import MissingDependencyError, UserInputError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--engine", "engines", default="ort", show_default=True,
              help="Comma-separated: torch, torch-cuda, ort, ort-cuda, ort-trt, trt, openvino (the ONNX as it is), "
                   "openvino-nncf (NNCF INT8 of an FP32 ONNX on alexnet-calibrate's images; needs "
                   "'alexnet-deploy[openvino]').")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--warmup-ms", type=float, default=200.0, show_default=True)
@click.option("--duration-s", type=float, default=3.0, show_default=True, help="Measured time per row.")
@click.option("--iterations", type=int, default=None, help="Measure this many runs per row instead of --duration-s.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (ORT, torch, OpenVINO).")
@click.option("--baseline", default=None, help="Engine the 'x base' column compares with (default: the first).")
@click.option("--end-to-end-images", "images_dir", type=click.Path(), default=None,
              help="Also time decoding + preprocessing of the images in this folder.")
@click.option("--overhead-check", is_flag=True, help="Also time a bare session.run loop (harness overhead).")
@click.option("--no-roofline", is_flag=True,
              help="Skip the roofline: FLOP and weight-byte counts, and the measured FP32/INT8 GEMM and memory "
                   "bandwidth ceilings (about 2 s).")
@click.option("--cuda-graph", is_flag=True, help="trt engine: replay captured CUDA graphs (fixed batch per row).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None)
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="PNG (needs matplotlib).")
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False), default=None,
              help="Baseline JSON of an earlier run: exit 1 when a row regressed.")
@click.option("--max-regression", default="10%", show_default=True)
@click.option("--server", default=None, help="Load-test a running v2 server instead (e.g. http://127.0.0.1:8000).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="With --server: concurrent clients.")
@click.option("--client-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --server: images per request.")
@click.option("--model-name", default=None,
              help="With --server: the model to load-test (default: the only model the server lists; "
                   "gRPC needs it).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True,
              help="With --server: v2 REST with binary tensors, or KServe v2 gRPC (ModelInfer with "
                   "raw_input_contents; --server grpc://HOST:PORT, alexnet-serve's --grpc-port).")
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def bench_cmd(models, engines, batch_sizes, warmup_ms, duration_s, iterations, threads, baseline, images_dir,
              overhead_check, no_roofline, cuda_graph, json_path, csv_path, md_path, plot_path, compare_path,
              max_regression, server, concurrency, client_batch, model_name, protocol):
    """Benchmark models on several engines and batch sizes: latency percentiles, throughput, ratios.

    With --server URL, drive a running alexnet-serve / Triton / KServe v2 endpoint instead."""
    _setup_logging()
    from alexnet_deploy.benchmarks import report
    from alexnet_deploy.benchmarks.harness import BenchConfig
    from alexnet_deploy.benchmarks.run import run_bench
    from alexnet_deploy.fileio import atomic_write_bytes, check_writable, refuse_overlapping_paths

    refuse_overlapping_paths(
        inputs=[*((f"model {i + 1}", m) for i, m in enumerate(models)), ("--compare", compare_path),
                ("--end-to-end-images", images_dir)],
        outputs={"--json": json_path, "--csv": csv_path, "--markdown": md_path, "--plot": plot_path})
    if server:
        from alexnet_deploy.benchmarks.loadgen import run_load

        if json_path:
            check_writable(json_path, "--json")
        messages = None
        if protocol == "grpc":
            try:
                import grpc  # noqa: F401

                from alexnet_deploy.server.kserve_v2 import grpc_predict_v2_pb2 as messages
            except ImportError as exc:
                raise MissingDependencyError(exc.name or "grpc", "'alexnet-deploy[serve]'",
                                             "alexnet-bench --protocol grpc") from None
        result = run_load(server, list(_int_list(concurrency)), duration_s, model=model_name, batch=client_batch,
                          warmup_ms=warmup_ms, echo=click.echo, protocol=protocol, messages=messages)
        if json_path:
            atomic_write_bytes(json_path, json.dumps(result, indent=2).encode())
        return
    if not models:
        raise UserInputError("give at least one model (ONNX, engine or checkpoint)")
    for p in (json_path, csv_path, md_path, plot_path):
        if p:
            check_writable(p)
    baseline_json = None
    if compare_path:
        try:
            baseline_json = json.loads(Path(compare_path).read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"cannot read --compare {compare_path}: {exc}") from None
    max_reg = report.parse_percent(max_regression)
    cfg = BenchConfig(_int_list(batch_sizes), warmup_ms, None if iterations else duration_s, iterations)
    result = run_bench(list(models), [e.strip() for e in engines.split(",") if e.strip()], cfg, threads=threads,
                       baseline_engine=baseline, images_dir=images_dir, overhead_check=overhead_check,
                       roofline=not no_roofline, cuda_graph=cuda_graph, echo=click.echo).to_dict()
    failures = report.compare(result, baseline_json, max_reg) if baseline_json else []
    click.echo(report.table(result))
    if json_path:
        atomic_write_bytes(json_path, report.to_json(result).encode())
    if csv_path:
        atomic_write_bytes(csv_path, report.to_csv(result).encode())
    if md_path:
        atomic_write_bytes(md_path, report.to_markdown(result).encode())
    if plot_path:
        report.plot(result, plot_path)
    if failures:
        for f in failures:
            click.echo(f"REGRESSION {f}")
        click.echo(f"error: {len(failures)} row(s) slower than {compare_path} beyond {max_regression} + noise", err=True)
        sys.exit(1)
