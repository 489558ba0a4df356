"""`alexnet-deploy` command."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from alexnet_deploy.cli.common import _handle_errors, _int_list, _setup_logging, VARIANT_HELP
from alexnet_deploy.errors import UserInputError


def _names(text: str, option: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    if not names:
        raise UserInputError(f"{option} needs at least one name")
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--weights", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint (alexnet-train .pt, or a state_dict .pt/.pth/.safetensors).")
@click.option("--variant", default=None, help=f"{VARIANT_HELP} (default: read from the checkpoint).")
@click.option("--dataset", default=None,
              help="Held-out data for parity and calibration: digits | CIFAR-10 folder | ImageFolder tree "
                   "(default: the dataset the checkpoint records).")
@click.option("--out", type=click.Path(file_okay=True), required=True, help="Deployment folder to write.")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="Comma-separated fp32, fp16, int8.")
@click.option("--targets", default="onnx,trt,triton", show_default=True,
              help="Comma-separated onnx, trt, triton (ONNX is always made: the others start from it).")
@click.option("--engines", default="auto", show_default=True,
              help="auto (torch, ort and what this machine has) or comma-separated torch, torch-cuda, ort, "
                   "ort-cuda, ort-trt, trt.")
@click.option("--batch-sizes", default="1,8,32", show_default=True,
              help="Benchmark batch sizes (the largest is also the engines' and Triton's max batch).")
@click.option("--bench-duration-s", type=float, default=2.0, show_default=True, help="Measured time per row.")
@click.option("--bench-iterations", type=int, default=None, help="Measure this many runs per row instead.")
@click.option("--bench-warmup-ms", type=float, default=200.0, show_default=True)
@click.option("--no-roofline", is_flag=True, help="Skip measuring the CPU ceilings (the roofline column).")
@click.option("--parity-images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out images for parity and the INT8 evaluation.")
@click.option("--golden-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Held-out images in DIR/golden, the set alexnet-verify checks the artifacts against on the target.")
@click.option("--tol", multiple=True, metavar="NAME=VALUE",
              help="Override a parity gate, e.g. min_top1_agreement=0.98 (the golden set carries it too).")
@click.option("--calib-images", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--calib-method", default="minmax", show_default=True, help="minmax | entropy | percentile | auto.")
@click.option("--no-sensitivity", is_flag=True, help="Skip the per-layer calibration sensitivity (and its plot).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="INT8: keep the most sensitive layers in float until the drop is within this many points.")
@click.option("--trt-library", default="auto", show_default=True, help="auto | tensorrt | tensorrt_rtx.")
@click.option("--compute-capability", default=None, help="TensorRT-RTX target, e.g. sm86 (default: this GPU or sm86).")
@click.option("--triton-kind", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Triton instance group (auto: gpu when this host has one).")
@click.option("--force", is_flag=True, help="Redo every step even when its inputs and options are unchanged, "
              "and replace folders/files in --out that share an artifact's name but were not written by alexnet-deploy.")
@click.option("-v", "--verbose", is_flag=True)
@click.version_option(package_name="alexnet-deploy")  # the installed version (importlib.metadata)
@_handle_errors
def deploy_cmd(weights, variant, dataset, out, precisions, targets, engines, batch_sizes, bench_duration_s,
               bench_iterations, bench_warmup_ms, no_roofline, parity_images, golden_images, tol, calib_images, calib_method, no_sensitivity,
               max_drop, trt_library, compute_capability, triton_kind, force, verbose):
    """Checkpoint -> verified deployment folder: ONNX (FP32/FP16/INT8), TensorRT engines, a Triton repository,
    parity against PyTorch and benchmarks of every artifact, with report.json, report.md and report.html.

    Steps whose inputs and options are unchanged (content hashes) are reused; exits 1 when a parity gate fails,
    2 when a step fails with an error. Folders and files in --out that alexnet-deploy did not write are never
    replaced (refused, naming them, unless --force)."""
    _setup_logging(verbose)
    from alexnet_deploy.deploy.plan import DeployOptions
    from alexnet_deploy.deploy.run import run_deploy
    from alexnet_deploy.parity.tolerances import parse_overrides

    opts = DeployOptions(
        weights=Path(weights), out=Path(out), dataset=dataset, variant=variant,
        precisions=_names(precisions, "--precisions"), targets=_names(targets, "--targets"),
        engines=None if engines.strip().lower() == "auto" else _names(engines, "--engines"),
        batch_sizes=tuple(sorted(set(_int_list(batch_sizes)))),
        bench_duration_s=None if bench_iterations else bench_duration_s, bench_iterations=bench_iterations,
        bench_warmup_ms=bench_warmup_ms, roofline=not no_roofline, parity_images=parity_images, golden_images=golden_images, tolerances=parse_overrides(tol),
        calib_images=calib_images, calib_method=calib_method, sensitivity=not no_sensitivity, max_drop=max_drop,
        trt_library=trt_library, compute_capability=compute_capability,
        triton_kind=None if triton_kind == "auto" else triton_kind, force=force)
    report = run_deploy(opts, echo=click.echo)
    finish(report, Path(out))


def finish(report: dict, out: Path) -> None:
    """Print the table and where the reports are; exit 1 when only parity gates failed, 2 when a step failed
    with an error."""
    from alexnet_deploy.deploy.report_md import text_table

    click.echo("")
    click.echo(text_table(report))
    click.echo(f"\nreport: {out / 'report.html'} (also report.md, report.json)")
    golden = report.get("golden") or {}
    if golden.get("status") == "written":
        click.echo(f"golden set: {out / golden['folder']} ({golden.get('images')} images); on the target: "
                   f"alexnet-verify {out}")
    if not report["passed"]:
        from alexnet_deploy.deploy.report_md import verdict

        # 2: a step failed with an error (disk full, a library exception, bad input); 1: only parity gates failed
        errors = (report.get("counts") or {}).get("errors", 0) or report.get("state") != "complete"
        click.echo(f"error: {verdict(report)}: " + "; ".join(report["failures"])[:400], err=True)
        sys.exit(2 if errors else 1)
