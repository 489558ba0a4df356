"""Machine information recorded with every benchmark, and a measured compute ceiling for the roofline."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict:
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    name, driver, cc = (p.strip() for p in (out[0].split(",") + ["", "", ""])[:3])
    return {"gpu": name, "driver": driver, "compute_capability": cc}


def jetson_info() -> dict:
    info = {}
    try:
        with open("/etc/nv_tegra_release") as f:
            info["l4t"] = f.readline().strip()
    except OSError:
        return info
    if shutil.which("nvpmodel"):
        try:
            info["nvpmodel"] = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("jetson_clocks"):
        try:
            out = subprocess.run(["jetson_clocks", "--show"], capture_output=True, text=True, timeout=10).stdout
            info["jetson_clocks"] = "MaxFreq" in out and "MinFreq" in out and _clocks_pinned(out)
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _clocks_pinned(show: str) -> bool:
    """jetson_clocks --show prints MinFreq=MaxFreq=CurrentFreq per CPU when the clocks are pinned."""
    import re

    rows = re.findall(r"MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", show)
    return bool(rows) and all(a == b == c for a, b, c in rows)


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "torch", "tensorrt", "tensorrt_rtx"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: just not recorded
            pass
    return versions


def emulation() -> str | None:
    """'qemu-user' when this is a non-x86 process run by QEMU's user-mode emulator on an x86 host (e.g. the
    aarch64 check of ``make check-aarch64``): its timings say nothing about a real device. qemu-user passes
    the host's /proc/cpuinfo through, and the emulator is registered in binfmt_misc."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    if any(k in cpuinfo for k in ("GenuineIntel", "AuthenticAMD", "vendor_id")) or os.path.exists(
            f"/proc/sys/fs/binfmt_misc/qemu-{machine}"):
        return "qemu-user"
    return None


def machine_info(threads: int | None) -> dict:
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "machine": platform.machine(), "emulated": emulation(),
        "threads": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **gpu_info(), **jetson_info(), "versions": library_versions(),
    }


def _best_rate(fn, flops: float, seconds: float) -> float:
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def cpu_peak_gflops(seconds: float = 0.5, n: int = 1024) -> float:
    """A measured FP32 ceiling of this CPU: the best SGEMM rate of ONNX Runtime's MLAS (the kernels the
    ort rows use) and of numpy's BLAS, each over ~``seconds``."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    rates = [_best_rate(lambda: a @ a, 2 * n ** 3, seconds / 2)]
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rates.append(_best_rate(lambda: sess.run(None, {"a": a, "b": a}), 2 * n ** 3, seconds / 2))
    except Exception:  # noqa: BLE001 - onnx/onnxruntime absent: numpy's figure stands
        pass
    return max(rates)
