"""The CPU features that choose ONNX Runtime's (MLAS's) integer kernels, read from /proc/cpuinfo (Linux) without
any dependency: x86 AVX2, AVX-512, AVX-512 VNNI, AVX-VNNI, AMX; ARM64 NEON with or without the dot product.
Every figure and every INT8 check names them: the same QDQ model saturates int16 on x86 without VNNI and does
not elsewhere (calibration/overflow.py)."""
from __future__ import annotations

import functools
import platform

# flag names as the Linux kernel spells them (x86 "flags", arm64 "Features")
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimd",
                "asimddp", "i8mm", "sve")
ARM_FLAGS = frozenset({"asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every flag the kernel lists for the first CPU (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


# numpy's own CPUID/HWCAP probe (what the process really gets: under qemu-user /proc/cpuinfo is the host's)
_NUMPY_NAMES = {"sse4_1": ("SSE41",), "avx": ("AVX",), "f16c": ("F16C",), "fma": ("FMA3",), "avx2": ("AVX2",),
                "avx512f": ("AVX512F",), "avx512bw": ("AVX512BW",), "avx512vl": ("AVX512VL",),
                "avx512_vnni": ("AVX512VNNI", "AVX512_CLX"), "avx512_bf16": ("AVX512BF16",),
                "asimd": ("ASIMD",), "asimdhp": ("ASIMDHP",), "asimddp": ("ASIMDDP",)}
# what an emulator that hides features also hides when numpy's probe cannot see the flag itself
_HIDDEN_WITH_AVX512 = ("avx512", "amx", "avx_vnni")


def _numpy_features() -> dict[str, bool]:
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as feats
        except ImportError:  # numpy 1.x (JetPack)
            from numpy.core._multiarray_umath import __cpu_features__ as feats
    except ImportError:
        return {}
    return {ours: any(feats.get(n, False) for n in names) for ours, names in _NUMPY_NAMES.items()
            if any(n in feats for n in names)}


@functools.lru_cache(maxsize=1)
def process_flags() -> frozenset[str]:
    """The kernel-choosing flags this process can use: numpy's probe where it has the flag, /proc/cpuinfo for
    the rest (AVX-VNNI, AMX, i8mm), which is dropped when the probe shows fewer features than /proc/cpuinfo
    lists (an emulator such as ``qemu-x86_64 -cpu Haswell`` hiding them)."""
    flags = set(cpu_flags())
    probed = _numpy_features()
    masked = any(flag in flags and not have for flag, have in probed.items())
    for flag, have in probed.items():
        (flags.add if have else flags.discard)(flag)
    if masked:
        flags -= {f for f in flags if f not in probed and (f in KERNEL_FLAGS or f.startswith(_HIDDEN_WITH_AVX512))}
    return frozenset(flags)


def isa_features() -> dict[str, bool]:
    """The kernel-choosing flags of this CPU, as this process sees them: {flag: present}."""
    flags = process_flags()
    return {f: f in flags for f in KERNEL_FLAGS}


def int8_kernels(flags) -> str:
    """The INT8 GEMM kernel family ONNX Runtime's MLAS dispatches to on a CPU with these flags (a set, or a
    {flag: present} dict), in the order MLAS checks them; "saturating" marks the u8s8 int16 pair-sum kernels.
    The one mapping from flags to kernels (reports show this code, messages ``kernel_family``'s words)."""
    f = {k for k, v in flags.items() if v} if isinstance(flags, dict) else set(flags)
    if "amx_int8" in f and "amx_tile" in f:
        return "amx"
    if "avx512_vnni" in f and "avx512bw" in f:
        return "avx512-vnni"
    if "avx_vnni" in f:
        return "avx-vnni"
    if "avx512bw" in f:
        return "avx512bw (saturating u8s8)"
    if "avx2" in f:
        return "avx2 (saturating u8s8)"
    if "i8mm" in f:
        return "neon-i8mm"
    if "asimddp" in f:
        return "neon-dotprod"
    if "asimd" in f:
        return "neon"
    return "generic"


_FAMILY_WORDS = {"amx": "x86 AMX", "avx512-vnni": "x86 AVX-512 VNNI", "avx-vnni": "x86 AVX-VNNI",
                 "avx512bw (saturating u8s8)": "x86 AVX-512 without VNNI (int16 pair sums)",
                 "avx2 (saturating u8s8)": "x86 AVX2 without VNNI (int16 pair sums)",
                 "neon-i8mm": "arm64 NEON i8mm", "neon-dotprod": "arm64 NEON dot-product", "neon": "arm64 NEON"}


def kernel_family(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """Which family of ONNX Runtime's U8S8 kernels this CPU runs, in a few words."""
    flags = process_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    arm = machine in ("aarch64", "arm64")
    if not arm and machine not in ("x86_64", "amd64"):
        return machine or "unknown"
    code = int8_kernels(f for f in flags if (f in ARM_FLAGS) == arm)
    if code == "generic":
        return "arm64 NEON" if arm else ("x86 SSE (int16 pair sums)" if flags else "x86 (flags unknown)")
    return _FAMILY_WORDS[code]
