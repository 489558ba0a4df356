"""Machine information recorded with every benchmark, and the measured ceilings of the roofline: FP32 and
INT8 GEMM rates (ONNX Runtime's MLAS kernels, the ones the ort rows use, and numpy's BLAS for FP32) and
streaming memory bandwidth (a large copy)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

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


# Distributions that install each module (onnxruntime-gpu installs `onnxruntime`).
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "torch": ("torch",),
                  "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "tensorrt_rtx": ("tensorrt-rtx",)}


def library_versions() -> dict:
    """Versions of the libraries that compute the figures. A module nobody imported yet is looked up in the
    installed package metadata, not imported: recording the machine never pulls torch into the torch-free
    runtime path (alexnet-verify on a Jetson)."""
    import sys
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod, dists in _DISTRIBUTIONS.items():
        if mod in sys.modules:
            v = getattr(sys.modules[mod], "__version__", None)
            if v:
                versions[mod] = v
            continue
        for dist in dists:
            try:
                versions[mod] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
            except Exception:  # noqa: BLE001 - a broken install: just not recorded
                break
        else:
            if mod != "torch":  # e.g. JetPack's apt TensorRT has no pip metadata; importing it is cheap
                try:
                    versions[mod] = __import__(mod).__version__
                except Exception:  # noqa: BLE001 - absent or broken: just not recorded
                    pass
    return versions


# The CPU features that choose ONNX Runtime's (MLAS) kernels, as /proc/cpuinfo names them. x86: AVX2 and
# AVX-512BW run INT8 through vpmaddubsw (u8 x s8 pairs summed in a *saturating* int16), VNNI and AMX through
# instructions that accumulate in int32 (exact); FP16/BF16 paths need f16c / avx512_bf16. arm64: asimddp
# (SDOT/UDOT) and i8mm (SMMLA) are the INT8 kernels, asimdhp the FP16 one.
X86_ISA = ("sse4_1", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
           "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
ARM_ISA = ("asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16")
# Linux aarch64 auxiliary vector bits (asm/hwcap.h), for a process whose /proc/cpuinfo is not its own CPU's
# (qemu-user passes the host's through; getauxval reports the emulated CPU)
_ARM_HWCAP = {"asimd": (16, 1 << 1), "asimdhp": (16, 1 << 10), "asimddp": (16, 1 << 20), "sve": (16, 1 << 22),
              "sve2": (26, 1 << 1), "i8mm": (26, 1 << 13), "bf16": (26, 1 << 14)}


def _cpuinfo_flags(text: str) -> set[str]:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _arm_hwcaps() -> set[str] | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        words = {at: int(libc.getauxval(at)) for at in (16, 26)}
    except (OSError, AttributeError):
        return None
    return {name for name, (at, bit) in _ARM_HWCAP.items() if words[at] & bit}


def int8_kernel_family(isa: dict) -> str:
    """The INT8 GEMM kernel family for these features (runtime/cpu_features.int8_kernels, the one mapping)."""
    from alexnet_deploy.runtime.cpu_features import int8_kernels

    return int8_kernels(isa)


def isa_features(cpuinfo: str | None = None, machine: str | None = None) -> dict:
    """{"flags": {feature: bool}, "int8_kernels": family, "source": where they were read}: the ISA features
    that choose ONNX Runtime's CPU kernels. ``cpuinfo``/``machine`` are for tests (default: this process)."""
    machine = (machine or platform.machine()).lower()
    arm = machine in ("aarch64", "arm64") or machine.startswith("arm")
    source = "/proc/cpuinfo"
    own = cpuinfo is None and machine == platform.machine().lower()
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    have = _cpuinfo_flags(cpuinfo)
    names = ARM_ISA if arm else X86_ISA
    if not arm and own:  # CPUID as this process sees it (under qemu-user /proc/cpuinfo is the host's)
        from alexnet_deploy.runtime.cpu_features import process_flags

        if process_flags() != frozenset(have):
            have, source = set(process_flags()), "/proc/cpuinfo + CPUID (numpy's probe)"
    if arm and (not have & set(ARM_ISA)):  # qemu-user shows the x86 host's cpuinfo: ask the kernel's auxv
        caps = _arm_hwcaps() if machine == platform.machine().lower() else None
        if caps is not None:
            have, source = caps, "getauxval(AT_HWCAP)"
    if not have:
        return {"flags": {}, "int8_kernels": "unknown", "source": "unavailable"}
    flags = {n: n in have for n in names}
    return {"flags": flags, "int8_kernels": int8_kernel_family(flags), "source": source}


def onnxruntime_info() -> dict:
    """ONNX Runtime's version and the execution providers this install offers ({} without onnxruntime)."""
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001 - absent or broken
        return {}
    try:
        providers = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        providers = []
    return {"version": onnxruntime.__version__, "providers": providers}


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
        "isa": isa_features(), "onnxruntime": onnxruntime_info(), "load_average": _load_average(),
        **gpu_info(), **jetson_info(), "versions": library_versions(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _best_rate(fn, flops: float, seconds: float) -> float:
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def _ort_session(nodes, inputs, outputs):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "ceiling", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def cpu_peak_gflops(seconds: float = 0.5, n: int = 1024) -> float:
    """A measured FP32 ceiling of this CPU: the best SGEMM rate of ONNX Runtime's MLAS (the kernels the
    ort rows use) and of numpy's BLAS, each over ~``seconds``."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    rates = [_best_rate(lambda: a @ a, 2 * n ** 3, seconds / 2)]
    try:
        from onnx import TensorProto, helper

        sess = _ort_session([helper.make_node("MatMul", ["a", "b"], ["c"])],
                            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
                            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        rates.append(_best_rate(lambda: sess.run(None, {"a": a, "b": a}), 2 * n ** 3, seconds / 2))
    except Exception:  # noqa: BLE001 - onnx/onnxruntime absent: numpy's figure stands
        pass
    return max(rates)


def cpu_int8_peak_gops(seconds: float = 0.5, n: int = 1024) -> float | None:
    """A measured INT8 ceiling: ONNX Runtime's MatMulInteger (uint8 x int8 -> int32, the MLAS QGEMM that
    QLinearConv and MatMulNBits' accuracy level 4 use). None without onnx/onnxruntime."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    try:
        from onnx import TensorProto, helper

        sess = _ort_session([helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
                            [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                             helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                            [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    except Exception:  # noqa: BLE001 - onnx/onnxruntime absent
        return None
    return _best_rate(lambda: sess.run(None, {"a": a, "b": b}), 2 * n ** 3, seconds)


def _split_rate(fn, buf: np.ndarray, moved: float, seconds: float, threads: int | None) -> float:
    """Best GB/s of ``fn(part)`` over ``buf``, on one thread and split over ``threads`` (default: the CPU
    count); numpy releases the GIL in copies and reductions, so the threads stream in parallel."""
    k = max(1, threads or os.cpu_count() or 1)
    bounds = np.linspace(0, len(buf), k + 1, dtype=np.int64)
    chunks = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    rates = [_best_rate(lambda: fn(slice(None)), moved, seconds / 2)]
    if k > 1:
        with ThreadPoolExecutor(k) as pool:
            rates.append(_best_rate(lambda: list(pool.map(fn, chunks)), moved, seconds / 2))
    return max(rates)


def memory_copy_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """Copy bandwidth in GB/s: the best of copying a ``mb`` MB buffer (bytes read + bytes written), on one
    thread and split over ``threads``; far larger than any cache."""
    src = np.ones((mb << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return _split_rate(lambda c: np.copyto(dst[c], src[c]), src, 2 * src.nbytes, seconds, threads)


def memory_read_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """Read bandwidth in GB/s: the best of summing a ``mb`` MB buffer as int64 (a streaming read with one add
    per 8 bytes, nothing written), on one thread and split over ``threads``. This is the traffic of a layer's
    weights, which are only read: on the 2-core EPYC it measured 41 GB/s against 31-35 GB/s for a copy, and
    ONNX Runtime's FP32 GEMV on a 256 MB matrix streamed 40 GB/s."""
    buf = np.ones((mb << 20) // 8, dtype=np.int64)
    return _split_rate(lambda c: buf[c].sum(), buf, buf.nbytes, seconds, threads)


def memory_bandwidth_gbs(seconds: float = 0.5, mb: int = 256, threads: int | None = None) -> float:
    """The memory ceiling of the roofline in GB/s: the better of the read and copy rates."""
    return max(memory_read_gbs(seconds / 2, mb, threads), memory_copy_gbs(seconds / 2, mb, threads))


def ceilings(seconds: float = 0.5) -> dict:
    """The roofline's ceilings on this machine, measured now (units in the keys)."""
    read, copy = memory_read_gbs(seconds), memory_copy_gbs(seconds)
    return {"fp32_gemm_gflops": cpu_peak_gflops(seconds), "int8_gemm_gops": cpu_int8_peak_gops(seconds),
            "memory_bandwidth_gbs": max(read, copy), "memory_read_gbs": read, "memory_copy_gbs": copy,
            "how": "best rate over ~0.5 s each: 1024^3 MatMul (ORT MLAS / numpy BLAS), 1024^3 MatMulInteger "
                   "u8 x s8 (ORT); memory = the better of reading (int64 sum) and copying (read + write "
                   "bytes) a 256 MB buffer, 1 and N threads"}
