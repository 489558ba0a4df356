"""The machine a report ran on: CPU model, the ISA features that choose ONNX Runtime's kernels, GPU / Jetson,
library versions, emulation. Recorded by every report (deploy, parity, verify, bench); torch-free, so it lives
with the runtime that runs on the target."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess

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
