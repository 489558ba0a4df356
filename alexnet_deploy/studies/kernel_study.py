"""INT8 on every CPU kernel family (issue 18): the digits-trained checkpoints calibrated with and without the
int16 pair-overflow fix (calibration/overflow.py), each run on the held-out split with

- the exact QDQ math (ONNX Runtime with no graph optimizations: Q/DQ as float ops, the same on every CPU),
- this host's kernels (ONNX Runtime as deployed),
- ONNX Runtime's AVX2 kernels (no VNNI) under ``qemu-x86_64-static -cpu Haswell`` (x86 hosts with qemu-user).

    python -m alexnet_deploy.studies.kernel_study --variants cifar10,bn --out docs/benchmarks/int8-kernels.json

Benchmarks are not tests: this prints a table and writes JSON; nothing here is run by pytest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from alexnet_deploy.studies.int4_study import ARTIFACTS, train_variant

_RUN = """
import sys, numpy as np
from alexnet_deploy.runtime.metadata import read_onnx_metadata
from alexnet_deploy.runtime.runners.ort import OrtRunner
with OrtRunner(sys.argv[1], read_onnx_metadata(sys.argv[1]), threads=1) as r:
    np.save(sys.argv[3], r.infer_batches(np.load(sys.argv[2]), 32))
"""


def _run(model: Path, x: np.ndarray, exact: bool = False) -> np.ndarray:
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    with OrtRunner(model, read_onnx_metadata(model), exact_qdq=exact) as r:
        return r.infer_batches(x, 32)


def _haswell(model: Path, x: np.ndarray) -> np.ndarray | None:
    qemu = shutil.which("qemu-x86_64-static")
    if qemu is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "run.py").write_text(_RUN)
        np.save(Path(d) / "x.npy", x)
        subprocess.run([qemu, "-cpu", "Haswell", sys.executable, str(Path(d) / "run.py"), str(model),
                        str(Path(d) / "x.npy"), str(Path(d) / "out.npy")], check=True, capture_output=True)
        return np.load(Path(d) / "out.npy")


def study(variant: str, root: Path = ARTIFACTS) -> list[dict]:
    from alexnet_deploy.calibration.data import load_calibration_set
    from alexnet_deploy.calibration.run import calibrate
    from alexnet_deploy.exporter.onnx_export import export_onnx
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.cpu_features import kernel_family
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    ckpt = train_variant(variant, root)
    fp32 = root / f"{variant}-digits.onnx"
    if not fp32.is_file():
        export_onnx(load_model(None, str(ckpt)), fp32)
    held = load_calibration_set("digits", read_onnx_metadata(fp32), 1000, "heldout", False)
    x, y = held.x.astype(np.float32), held.labels
    ref = _run(fp32, x)
    acc = lambda out: round(100 * float(np.mean(out.argmax(1) == y)), 2)  # noqa: E731
    err = lambda out: round(float(np.abs(out - ref).max()), 4)  # noqa: E731
    rows = []
    for placement in ("ort", "all"):
        for fix in (True, False):
            out = root / f"{variant}-digits-int8-{placement}{'' if fix else '-nofix'}.onnx"
            res = calibrate(fp32, out, dataset="digits", num_images=500, eval_images=1000, placement=placement,
                            overflow_fix=fix, allow_kernel_mismatch=True, echo=lambda *_: None)
            exact, host, avx2 = _run(out, x, exact=True), _run(out, x), _haswell(out, x)
            layers = res.provenance["int16_overflow_fix"].get("layers", {})
            row = {"variant": variant, "placement": placement, "overflow_fix": fix, "images": len(x),
                   "fp32_acc": acc(ref), "exact_acc": acc(exact), "exact_max_err": err(exact),
                   "host": kernel_family(), "host_acc": acc(host), "host_max_err": err(host),
                   "avx2_acc": acc(avx2) if avx2 is not None else None,
                   "avx2_max_err": err(avx2) if avx2 is not None else None,
                   "channels_changed": sum(v["changed"] for v in layers.values()),
                   "channels": sum(v["channels"] for v in layers.values()),
                   "min_level": min((v["min_level"] for v in layers.values()), default=None)}
            rows.append(row)
            print(table([row], header=not rows[:-1]), flush=True)
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    head = (f"{'variant':<9}{'place':<6}{'fix':<5}{'FP32':>7}{'exact':>7}{'host':>7}{'AVX2':>7}"
            f"{'err exact':>10}{'err host':>10}{'err AVX2':>10}{'changed':>14}{'min L':>6}")
    fmt = lambda v, w, p=2: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    lines = [head] if header else []
    for r in rows:
        lines.append(f"{r['variant']:<9}{r['placement']:<6}{'on' if r['overflow_fix'] else 'off':<5}"
                     f"{fmt(r['fp32_acc'], 7)}{fmt(r['exact_acc'], 7)}{fmt(r['host_acc'], 7)}{fmt(r['avx2_acc'], 7)}"
                     f"{fmt(r['exact_max_err'], 10, 3)}{fmt(r['host_max_err'], 10, 3)}{fmt(r['avx2_max_err'], 10, 3)}"
                     f"{str(r['channels_changed']) + '/' + str(r['channels']):>14}{str(r['min_level'] or '-'):>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="cifar10,bn")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from alexnet_deploy.runtime.machine import machine_info

    rows = [r for v in args.variants.split(",") for r in study(v.strip())]
    print(table(rows))
    if args.out:
        from alexnet_deploy.fileio import atomic_write_json

        atomic_write_json(args.out, {"machine": machine_info(None), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
