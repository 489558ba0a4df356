#!/usr/bin/env python3
"""The GPU half of alexnet-deploy in one run (``scripts/check_gpu.sh``, ``make check-gpu``).

    check_gpu.py run [--dry-run] [--out DIR] [--work DIR] [--cpu-folder DIR] [--wheels DIR] [--budget-s S]
    check_gpu.py build-cpu-folder DIR     on the CPU host: the deployment folder the GPU machine verifies
    check_gpu.py wheels                   the wheels the GPU machine needs, and the gpu-wheels command
    check_gpu.py probe                    (internal) this machine's GPU, driver and libraries as JSON
    check_gpu.py inputs WORK              (internal) test images and a short video
    check_gpu.py serve-request URL IMAGE PREDICT.json NAME ENGINE   (internal) one classify request

``run`` drives the real console scripts (alexnet-train, -export, -deploy, -verify, -predict, -bench, -stream,
-serve) and records every step in OUT/gpu-check.json and OUT/gpu-check.md with a status: passed, failed, or
skipped with the reason. Exit status: 0 when no step failed, 1 when one did (or the time budget ran out),
2 on bad input before any GPU work: no GPU, a missing wheel, a driver too old for the staged onnxruntime-gpu,
a bad option. Only the standard library is imported here; the commands run in subprocesses.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "alexnet-deploy.gpu-check/1"
PROG = "check-gpu"
DEFAULT_BUDGET_S = 450  # the whole run, under the 8 minutes the issue allows (a step is stopped at the limit)
DEFAULT_WORK = "/tmp/alexnet-check-gpu"
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 48, 64, 24
BENCH_BATCHES = "1,32,256"

# Wheels the GPU machine lacks (it has Python 3.12, torch 2.11, torchvision, onnx, CPU onnxruntime and no
# network): (distribution, version, module, what needs it). The versions are the development venv's, where
# the test suite passes; fastapi 0.165 imports opentelemetry at import time, pydantic 2.14 needs
# typing-extensions >= 4.16.
REQUIRED_WHEELS = [
    ("onnxruntime-gpu", "1.31.1", "onnxruntime", "the ort-cuda / ort-trt engines (replaces the CPU onnxruntime)"),
    ("onnxsim", "0.8.1", "onnxsim", "alexnet-export onnx / alexnet-deploy (graph simplification)"),
    ("av", "18.1.0", "av", "alexnet-stream (PyAV) and the test video"),
    ("fastapi", "0.165.0", "fastapi", "alexnet-serve"),
    ("starlette", "1.10.0", "starlette", "alexnet-serve (fastapi)"),
    ("pydantic", "2.14.4", "pydantic", "alexnet-serve (fastapi)"),
    ("pydantic-core", "2.50.5", "pydantic_core", "alexnet-serve (pydantic)"),
    ("annotated-types", "0.8.0", "annotated_types", "alexnet-serve (pydantic)"),
    ("typing-inspection", "0.4.5", "typing_inspection", "alexnet-serve (pydantic)"),
    ("typing-extensions", "4.16.0", "typing_extensions", "pydantic 2.14 (>= 4.16)"),
    ("annotated-doc", "0.0.7", "annotated_doc", "alexnet-serve (fastapi)"),
    ("opentelemetry-api", "1.45.2", "opentelemetry", "fastapi 0.165 (imported at start)"),
    ("uvicorn", "0.55.0", "uvicorn", "alexnet-serve"),
    ("python-multipart", "0.0.34", "python_multipart", "alexnet-serve (form uploads)"),
    ("httptools", "0.9.0", "httptools", "alexnet-serve's HTTP parser (llhttp; h11 without it, slower)"),
    ("uvloop", "0.23.0", "uvloop", "alexnet-serve's event loop (libuv; asyncio's without it, slower)"),
    ("grpcio", "1.85.3", "grpc", "alexnet-serve --grpc-port (KServe v2 gRPC)"),
    ("anyio", "4.16.0", "anyio", "starlette 1.10 (>= 4); the machine's version is not recorded"),
    ("click", "8.5.1", "click", "every alexnet-* command (>= 8.2); the machine's version is not recorded"),
]
# TensorRT-RTX (97 MB, two more parts): its builder runs anywhere, its runtime refused compute capability 9.0
# in this workplace; staged, the trt rows record what this GPU says. Full TensorRT (libnvinfer, > 1 GB) does
# not fit the carry limit.
OPTIONAL_WHEELS = [
    ("tensorrt-rtx-cu13-bindings", "1.7.1.116", "tensorrt_rtx", "the trt engine (TensorRT-RTX)"),
    ("tensorrt-rtx-cu13-libs", "1.7.1.116", None, "the trt engine (TensorRT-RTX libraries)"),
]
# Already on the GPU machine (KINDS.md); checked so that a missing one is named, not a traceback later.
PREINSTALLED = [("torch", "torch"), ("torchvision", "torchvision"), ("onnx", "onnx"), ("onnx-ir", "onnx_ir"),
                ("numpy", "numpy"), ("pillow", "PIL"), ("tqdm", "tqdm"),
                ("safetensors", "safetensors"), ("scikit-learn", "sklearn"), ("pytest", "pytest"),
                ("prometheus-client", "prometheus_client"), ("h11", "h11"), ("idna", "idna"),
                ("protobuf", "google.protobuf")]  # protobuf: onnx needs it; alexnet-serve's gRPC messages too
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
HIDDEN = ("", "-1", "none", "void", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that hide every GPU
CPU_STANDIN = {"torch-cuda": "torch", "ort-cuda": "ort"}  # --rehearse-on-cpu


def say(msg: str = "") -> None:
    """Print a progress line; a reader that went away (``| head``) stops the printing, never the check."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def die(msg: str, code: int = 2):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def one_line(text: str, limit: int = 300) -> str:
    """The last meaningful line of a command's output (the CLI's one-line error), without progress noise."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Error in cpuinfo", "WARNING", "warnings.warn"))] or lines
    return (lines[-1] if lines else "").removeprefix("error: ")[:limit]


# ------------------------------------------------------------------------------------------------------ probe
def _version(dist: str, module: str | None) -> str | None:
    for name in (dist, dist.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if module:
        try:
            return str(getattr(importlib.import_module(module), "__version__", "present"))
        except Exception:  # noqa: BLE001 - a broken install is a missing one
            return None
    return None


def _has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {"error": "nvidia-smi not found"}
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,compute_cap,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"nvidia-smi failed: {exc}"}
    rows = [[p.strip() for p in ln.split(",")] for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not rows:
        return {"error": f"nvidia-smi lists no GPU ({one_line(out.stderr or out.stdout) or 'exit ' + str(out.returncode)})"}
    name, driver, cc, mem = (rows[0] + ["", "", "", ""])[:4]
    return {"name": name, "driver": driver, "compute_capability": cc, "memory": mem, "count": len(rows)}


def _libcuda() -> dict:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return {"error": "libcuda.so.1 (the NVIDIA driver) not found"}
    v, n = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return {"error": "cuDriverGetVersion failed"}
    info = {"driver_cuda": f"{v.value // 1000}.{(v.value % 1000) // 10}"}
    err = lib.cuInit(0)
    if err == 0 and lib.cuDeviceGetCount(ctypes.byref(n)) == 0:
        info["devices"] = n.value
    else:
        info["devices"] = 0
        info["error"] = f"cuInit failed (CUresult {err})"
    return info


def _torch(driver: bool) -> dict:
    if not driver:  # torch.cuda needs the driver: without one, importing torch (seconds) would tell nothing more
        return {"version": _version("torch", None), "cuda": None, "available": False,
                "note": "not imported: no NVIDIA driver here"}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return {"error": f"torch cannot be imported: {one_line(str(exc))}"}
    info = {"version": torch.__version__, "cuda": torch.version.cuda, "available": bool(torch.cuda.is_available())}
    if info["available"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    return info


def _onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return {"error": f"onnxruntime cannot be imported: {one_line(str(exc))}"}
    info = {"version": ort.__version__, "file": getattr(ort, "__file__", None),
            "gpu_distribution": _version("onnxruntime-gpu", None)}
    try:
        from onnxruntime.capi import build_and_package_info as b

        info.update({k: getattr(b, k) for k in ("package_name", "cuda_version", "cudnn_version") if hasattr(b, k)})
    except Exception:  # noqa: BLE001
        pass
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            info["preload_dlls"] = "ok"
        except Exception as exc:  # noqa: BLE001
            info["preload_dlls"] = one_line(str(exc))
    info["providers"] = list(ort.get_available_providers())
    return info


def probe() -> dict:
    """Everything the check needs to know before it runs a step; JSON-serializable, never raises."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    smi, cuda = _nvidia_smi(), _libcuda()
    driver = "error" not in cuda and not (cvd is not None and cvd.strip() in HIDDEN)
    p = {"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
         "cpu": _cpu_model(), "cores": os.cpu_count(), "loadavg": _loadavg(), "cuda_visible_devices": cvd,
         "nvidia_smi": smi, "libcuda": cuda, "torch": _torch(driver), "onnxruntime": _onnxruntime()}
    p["wheels"] = {d: _version(d, None if d == "onnxruntime-gpu" else m) if m is None or _has_module(m) else None
                   for d, _, m, _ in REQUIRED_WHEELS}
    p["optional_wheels"] = {d: _version(d, m) if m is None or _has_module(m) else None for d, _, m, _ in OPTIONAL_WHEELS}
    p["preinstalled"] = {d: _version(d, m) if _has_module(m) else None for d, m in PREINSTALLED}
    p["trt_libraries"] = {}
    for mod in TRT_MODULES:
        if _has_module(mod) and not driver:  # its runtime needs a GPU; the version is all there is to say
            p["trt_libraries"][mod] = _version(mod.replace("_", "-"), None) or "present"
        elif _has_module(mod):
            try:
                p["trt_libraries"][mod] = importlib.import_module(mod).__version__
            except Exception as exc:  # noqa: BLE001
                p["trt_libraries"][mod] = f"import failed: {one_line(str(exc))}"
    p["libnvinfer"] = ctypes.util.find_library("nvinfer") or _dlopen_any("libnvinfer.so.10", "libnvinfer.so.11")
    p["cuda_bindings"] = _version("cuda-bindings", "cuda.bindings") if _has_module("cuda") else None
    return p


def _dlopen_any(*names: str) -> str | None:
    for n in names:
        try:
            ctypes.CDLL(n)
            return n
        except OSError:
            pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -------------------------------------------------------------------------------- preflight (bad input: exit 2)
def gpu_problem(p: dict) -> str | None:
    """Why there is no usable NVIDIA GPU here, or None."""
    cvd = p.get("cuda_visible_devices")
    if cvd is not None and cvd.strip() in HIDDEN:
        return f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU"
    smi, cuda, torch = p.get("nvidia_smi") or {}, p.get("libcuda") or {}, p.get("torch") or {}
    if torch.get("available"):
        return None
    reasons = [smi.get("error"), cuda.get("error") if not cuda.get("devices") else None]
    if "error" in torch:
        reasons.append(torch["error"])
    elif torch.get("note"):
        reasons.append(f"torch {torch.get('version')} ({torch['note']})")
    else:
        reasons.append(f"torch {torch.get('version')} (CUDA {torch.get('cuda')}): torch.cuda.is_available() is False")
    return "no NVIDIA GPU here: " + "; ".join(r for r in reasons if r)


def missing_wheels(p: dict, cuda: bool = True) -> list[str]:
    """Required packages that are not importable, each with what needs it (``cuda=False``: the CPU onnxruntime
    will do, for --rehearse-on-cpu)."""
    out = []
    wheels = p.get("wheels") or {}
    for dist, version, module, what in REQUIRED_WHEELS:
        if dist == "onnxruntime-gpu" and not cuda:
            continue
        if dist == "onnxruntime-gpu":
            ort = p.get("onnxruntime") or {}
            if "error" in ort:
                out.append(f"onnxruntime-gpu=={version} ({ort['error']})")
            elif "CUDAExecutionProvider" not in ort.get("providers", []):
                out.append(f"onnxruntime-gpu=={version} (onnxruntime {ort.get('version')} has only "
                           f"{', '.join(ort.get('providers') or ['no providers'])})")
        elif not wheels.get(dist):
            out.append(f"{dist}=={version} (for {what})")
    for dist, ver in (p.get("preinstalled") or {}).items():
        if not ver:
            out.append(f"{dist} (preinstalled on the GPU machine; stage a wheel)")
    return out


def driver_problem(p: dict) -> str | None:
    """The driver's CUDA version is older than the CUDA major onnxruntime-gpu was built for."""
    ort = p.get("onnxruntime") or {}
    built, have = ort.get("cuda_version"), (p.get("libcuda") or {}).get("driver_cuda")
    if not built or not have:
        return None
    try:
        b_major, h = int(str(built).split(".")[0]), tuple(int(x) for x in str(have).split(".")[:2])
    except ValueError:
        return None
    if h[0] < b_major:
        driver = (p.get("nvidia_smi") or {}).get("driver", "?")
        return (f"the NVIDIA driver {driver} supports CUDA {have}, older than CUDA {built} that onnxruntime-gpu "
                f"{ort.get('version')} was built for: stage an onnxruntime-gpu built for CUDA {h[0]} "
                f"(../shared/tools/gpu-wheels onnxruntime-gpu==VERSION) or run on a newer driver")
    return None


def wheels_text() -> str:
    req = " ".join(f"{d}=={v}" for d, v, _, _ in REQUIRED_WHEELS)
    opt = " ".join(f"{d}=={v}" for d, v, _, _ in OPTIONAL_WHEELS)
    lines = ["Wheels the GPU machine needs (Python 3.12, x86-64; it has torch, torchvision, onnx, CPU onnxruntime):"]
    lines += [f"  {d}=={v:<12} {what}" for d, v, _, what in REQUIRED_WHEELS]
    lines += ["Optional (the trt rows; TensorRT-RTX's runtime may refuse a data-centre GPU, and the row says so):"]
    lines += [f"  {d}=={v:<12} {what}" for d, v, _, what in OPTIONAL_WHEELS]
    lines += ["", "Pack them into parts on the development host (docs/gpu-check.md has the device-tool calls):",
              f"  ../shared/tools/gpu-wheels {req}", "  (with TensorRT-RTX:) ../shared/tools/gpu-wheels " + req + " " + opt]
    return "\n".join(lines)


def install_wheels(src: Path, target: Path, python: str) -> str:
    """Install the wheels in ``src`` (a folder of .whl files, or of gpu-wheels parts) into ``target``."""
    wheels = sorted(src.glob("*.whl"))
    parts = sorted(p for p in src.glob("part*") if p.is_file())
    if not wheels and parts:
        tar = target.with_name(target.name + ".tar")
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(tar, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        want = _sha_from_install_sh(src / "install.sh")
        if want and want != h.hexdigest():
            die(f"the wheel parts in {src} do not add up (sha256 {h.hexdigest()[:12]}, install.sh says "
                f"{want[:12]}): a part is missing or stale; stage every part of one gpu-wheels run")
        unpack = target.with_name(target.name + ".unpacked")
        shutil.rmtree(unpack, ignore_errors=True)
        try:
            with tarfile.open(tar) as t:
                t.extractall(unpack, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(unpack)
        except (tarfile.TarError, OSError) as exc:
            die(f"the wheel parts in {src} are not one tar ({exc}); stage every part of one gpu-wheels run")
        tar.unlink()
        wheels = sorted(unpack.rglob("*.whl"))
    if not wheels:
        die(f"--wheels {src}: no .whl files and no gpu-wheels parts (part00, part01, ...) there")
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--upgrade", "--target", str(target), *map(str, wheels)],
                       capture_output=True, text=True)
    shutil.rmtree(target.with_name(target.name + ".unpacked"), ignore_errors=True)
    if r.returncode != 0:
        die(f"pip could not install the staged wheels from {src}: {one_line(r.stderr or r.stdout)}")
    return f"{len(wheels)} wheels from {src} into {target}"


def _sha_from_install_sh(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    import re

    m = re.search(r"echo '([0-9a-f]{64})  w\.tar'", text)
    return m.group(1) if m else None


def default_wheel_source() -> Path | None:
    for cand in (os.environ.get("CHECK_GPU_WHEELS"), "/tmp/stage", str(REPO / ".gpu-wheels")):
        if cand and Path(cand).is_dir() and (list(Path(cand).glob("part*")) or list(Path(cand).glob("*.whl"))):
            return Path(cand)
    return None


# ----------------------------------------------------------------------------------------------- the steps
class Check:
    """Runs (or, with --dry-run, lists) the steps and records one row per step."""

    def __init__(self, args, work: Path, out: Path, env: dict, caps: dict, dry_run: bool, skip_all: str | None,
                 start: float):
        self.args, self.work, self.out, self.env, self.caps = args, work, out, env, caps
        self.dry_run, self.skip_all = dry_run, skip_all
        self.rows: list[dict] = []
        self.bench: list[dict] = []
        self.start = start  # the budget covers the whole run: probe and wheel install too
        self.budget = float(args.budget_s)
        self.logs = work / "logs"
        self.trt_library: str | None = None
        self.rehearse = bool(getattr(args, "rehearse_on_cpu", False))
        self.on_row = None  # called after each row (the partial report)

    # capability -> (present?, reason when not); None: decided by an earlier step at run time
    def need(self, needs) -> str | None:
        if self.skip_all:
            return self.skip_all
        for n in needs:
            if isinstance(n, Path):
                if not self.dry_run and not n.exists():
                    return f"needs {n.name}, which an earlier step did not make"
                continue
            ok, why = self.caps.get(n, (False, f"{n} is not available"))
            if ok is None and self.dry_run:
                continue
            if not ok:
                return why
        return None

    def cpu_engines(self, cmd: list) -> list:
        """--rehearse-on-cpu: the CPU engine in place of each CUDA one (torch-cuda -> torch, ort-cuda -> ort)."""
        out = list(cmd)
        for i in range(1, len(out)):
            if str(out[i - 1]) in ("--engine", "--engines"):
                out[i] = ",".join(dict.fromkeys(CPU_STANDIN.get(e, e) for e in str(out[i]).split(",")))
        return out

    def row(self, rid: str, title: str, status: str, reason: str = "", seconds: float = 0.0,
            commands: list | None = None, details: dict | None = None) -> dict:
        r = {"id": rid, "title": title, "status": status, "reason": reason, "seconds": round(seconds, 2),
             "commands": [shlex.join(map(str, c)) for c in commands or []], "argv": [list(map(str, c)) for c in commands or []]}
        if details:
            r["details"] = details
        shown = reason if status != "skipped" or not self.rows or reason != self.rows[-1]["reason"] \
            else "(the same reason as above)"
        self.rows.append(r)
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "skip", "planned": "plan"}[status]
        say(f"[{mark}] {rid:<22} {title}" + (f" ({seconds:.1f} s)" if seconds else "") + (f": {shown}" if reason else ""))
        if self.dry_run:
            for c in r["commands"]:
                say(f"         $ {c}")
        if self.on_row:
            self.on_row()
        return r

    def run(self, rid: str, title: str, commands: list, needs=(), timeout: float = 120, check=None, cwd=None,
            soft: bool = False, ok_rc: tuple = (0,)) -> dict:
        """Run ``commands`` in order (stop at the first failure); ``check(outputs) -> (status, reason, details)``.
        ``soft``: a failing command means the capability is absent here (skipped with the reason), not a failure."""
        commands = [self.cpu_engines(c) for c in commands] if self.rehearse else commands
        why = self.need(needs)
        if self.dry_run:
            return self.row(rid, title, "planned", f"here it would skip: {why}" if why else "", commands=commands)
        if why:
            return self.row(rid, title, "skipped", why, commands=commands)
        left = self.budget - (time.monotonic() - self.start)
        if left < 5:
            return self.row(rid, title, "failed", f"not run: the time budget of {self.budget:.0f} s is spent",
                            commands=commands)
        t0 = time.monotonic()
        outputs = []
        self.logs.mkdir(parents=True, exist_ok=True)
        for i, cmd in enumerate(commands):
            rc, out, err = self._exec(cmd, min(timeout, left - (time.monotonic() - t0)), cwd, self.logs / f"{rid}.{i}.log")
            outputs.append((rc, out, err))
            if rc not in ok_rc:
                reason = one_line(err) or one_line(out) or f"exit {rc}"
                if rc == 124:
                    reason = f"timed out after {timeout:.0f} s: {shlex.join(map(str, cmd))[:120]}"
                name = next((Path(str(a)).name for a in cmd if Path(str(a)).name.startswith("alexnet-")),
                            Path(str(cmd[0])).name)
                return self.row(rid, title, "skipped" if soft and rc != 124 else "failed",
                                f"{name} exit {rc}: {reason}", time.monotonic() - t0, commands)
        status, reason, details = check(outputs) if check else ("passed", "", None)
        return self.row(rid, title, status, reason, time.monotonic() - t0, commands, details)

    def _exec(self, cmd, timeout: float, cwd, log: Path) -> tuple[int, str, str]:
        timeout = max(1.0, timeout)
        try:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd or self.work, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        except OSError as exc:
            return 127, "", f"cannot start {cmd[0]}: {exc.strerror}"
        _RUNNING.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            rc = 124
        finally:
            _RUNNING.remove(proc)
        log.write_text(f"$ {shlex.join(map(str, cmd))}\n--- stdout\n{out}\n--- stderr\n{err}\n--- exit {rc}\n")
        return rc, out, err


_RUNNING: list = []  # the step's process (its own process group), stopped with the run


def _stop_on_signal(signum, frame) -> None:
    """SIGINT / SIGTERM / SIGHUP: stop the running step's whole process group (a server included), then exit.
    The rows done so far are already in the report."""
    for proc in list(_RUNNING):
        _kill_group(proc)
    print(f"{PROG}: stopped by signal {signum}; the report has the steps done so far", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _top1(predict_json: str) -> list[tuple[str, str, float]]:
    data = json.loads(predict_json)
    return [(Path(r["image"]).name, r["top"][0]["label"], float(r["top"][0]["probability"])) for r in data["results"]]


def same_predictions(ref_out: str, got_out: str, tol: float = 2e-3) -> tuple[bool, str]:
    ref, got = _top1(ref_out), _top1(got_out)
    if [r[0] for r in ref] != [g[0] for g in got]:
        return False, "different images classified"
    bad = [f"{r[0]}: {r[1]} {r[2]:.4f} vs {g[1]} {g[2]:.4f}" for r, g in zip(ref, got)
           if r[1] != g[1] or abs(r[2] - g[2]) > tol]
    if bad:
        return False, f"{len(bad)}/{len(ref)} images differ from ONNX Runtime CPU: {bad[0]}"
    return True, f"{len(ref)} images: same top-1 as ONNX Runtime CPU, probabilities within {tol}"


def _junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    skips = sorted({(sk.get("message") or "").strip() for tc in root.iter("testcase") for sk in tc.findall("skipped")})
    failed = [f"{tc.get('classname')}.{tc.get('name')}" for tc in root.iter("testcase")
              if tc.find("failure") is not None or tc.find("error") is not None]
    return {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "skip_reasons": skips,
            "failed_tests": failed}


def run_steps(c: Check, py: str) -> None:
    w = c.work
    models, trt_dir, logs = w / "models", w / "trt", w / "logs"
    ckpt, digits_onnx, tv_onnx = w / "digits.pt", models / "cifar10-digits.onnx", models / "torchvision-random.onnx"
    images, video = w / "images", w / "digits.mkv"
    helper = [py, str(REPO / "scripts" / "check_gpu.py")]
    trt_lib = c.trt_library
    if not c.dry_run:
        for d in (models, trt_dir, logs, w / "verify", w / "bench", w / "stream"):
            d.mkdir(parents=True, exist_ok=True)

    # 1. the project's GPU tests
    def pytest_check(outputs):
        j = _junit(w / "pytest-gpu.xml")
        if not j:
            return "failed", f"no JUnit report (pytest exit {outputs[-1][0]}: {one_line(outputs[-1][1])})", None
        if j["failures"] or j["errors"]:
            return "failed", f"{j['failures'] + j['errors']} failed: {', '.join(j['failed_tests'][:3])}", j
        if j["tests"] == 0:
            return "skipped", "no test is marked gpu", j
        if j["passed"] == 0:
            return "skipped", "every gpu test skipped: " + "; ".join(j["skip_reasons"])[:300], j
        return "passed", f"{j['passed']} passed, {j['skipped']} skipped" + (
            f" ({'; '.join(j['skip_reasons'])[:200]})" if j["skip_reasons"] else ""), j

    c.run("pytest-gpu", "pytest -m gpu (the project's CUDA tests)",
          [[py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "--junitxml",
            str(w / "pytest-gpu.xml"), str(REPO / "tests")]], needs=("gpu",), timeout=180, check=pytest_check,
          cwd=str(REPO), ok_rc=(0, 1, 5))  # 1: failures (the JUnit report names them), 5: no gpu test collected

    # 2. a digits checkpoint and the models the later steps share
    if c.args.checkpoint:
        if not c.dry_run and not c.skip_all:
            shutil.copy(c.args.checkpoint, ckpt)
        c.row("train", "alexnet-train: cifar10 variant on digits (the checkpoint the deployment starts from)",
              "skipped", c.skip_all or f"--checkpoint {c.args.checkpoint} given: not trained here")
    else:
        c.run("train", "alexnet-train: cifar10 variant on digits (the checkpoint the deployment starts from)",
              [["alexnet-train", "--variant", "cifar10", "--dataset", "digits", "--epochs", "30", "--seed", "0",
                "--no-progress", "-o", str(ckpt)]], needs=("gpu",), timeout=180)
    c.run("export-models", "alexnet-export onnx: the digits model and a random-weight torchvision AlexNet",
          [["alexnet-export", "onnx", "--weights", str(ckpt), "-o", str(digits_onnx)],
           ["alexnet-export", "onnx", "--variant", "torchvision", "--weights", "random", "--seed", "0",
            "--dataset", "none", "-o", str(tv_onnx)]], needs=("gpu", ckpt), timeout=180)
    c.run("inputs", "test images (digits, photos) and a short FFV1 video",
          [[*helper, "inputs", str(w)]], needs=("gpu", "av"), timeout=60)

    # 3. which engines this GPU runs: ort-cuda (required), ort-trt and trt (where present)
    pred = {e: w / f"predict-{e}.json" for e in ("ort", "ort-cuda", "ort-trt", "trt")}

    def predict(engine, model=digits_onnx):
        return [*helper, "capture", str(pred[engine]), "alexnet-predict", str(model), str(images), "--engine",
                engine, "--json", "--top-k", "3"]

    def compare_with(engine):
        def check(outputs):
            try:
                ok, msg = same_predictions(pred["ort"].read_text(), pred[engine].read_text())
            except (OSError, ValueError, KeyError) as exc:
                return "failed", f"unreadable predictions: {exc}", None
            return ("passed" if ok else "failed"), msg, None
        return check

    c.run("predict-ort-cuda", "alexnet-predict --engine ort-cuda: same top-1 as ONNX Runtime CPU",
          [predict("ort"), predict("ort-cuda")], needs=("gpu", "ort-cuda", digits_onnx), timeout=90,
          check=compare_with("ort-cuda"))
    if c.dry_run or c.caps["ort-cuda"][0]:
        c.caps["ort-cuda"] = (c.rows[-1]["status"] in ("passed", "planned"),
                              f"ort-cuda does not run here ({c.rows[-1]['reason']})")
    r = c.run("probe-ort-trt", "ONNX Runtime's TensorRT execution provider (optional)",
              [predict("ort-trt")], needs=("gpu", "ort-trt-listed", digits_onnx), timeout=180,
              check=compare_with("ort-trt"), soft=True)
    c.caps["ort-trt"] = (None, "") if c.dry_run else (r["status"] == "passed", r["reason"] or "not probed")
    probe_plan = trt_dir / "probe-cifar10.plan"
    lib_opt = ["--library", trt_lib] if trt_lib else []
    r = c.run("probe-trt", "a TensorRT / TensorRT-RTX runtime on this GPU (optional): build, then run",
              [["alexnet-export", "trt", str(digits_onnx), "-o", str(probe_plan), "--max-batch", "32", *lib_opt],
               predict("trt", probe_plan)], needs=("gpu", "trt-library", digits_onnx), timeout=180,
              check=compare_with("trt"), soft=True)
    c.caps["trt"] = (None, "") if c.dry_run else (r["status"] == "passed", r["reason"] or "not probed")

    # 4. the deployment on the GPU, and alexnet-verify of it and of the CPU-built folder
    engines = ["torch-cuda", "ort-cuda"] + [e for e in ("ort-trt", "trt") if c.caps[e][0] is not False]
    targets = "onnx,trt" if "trt" in engines else "onnx"
    deploy_dir = w / "deploy-gpu"

    def deploy_check(outputs):
        try:
            rep = json.loads((deploy_dir / "report.json").read_text())
        except (OSError, ValueError) as exc:
            return "failed", f"no report.json: {exc}", None
        steps = rep.get("steps") or []
        by = {s: [x["name"] for x in steps if x["status"] == s] for s in ("ran", "reused", "skipped", "failed")}
        skipped = [f"{x['name']}: {x['reason']}" for x in steps if x["status"] == "skipped"]
        details = {"steps": {k: len(v) for k, v in by.items()}, "skipped": skipped, "failures": rep.get("failures")}
        if by["failed"] or not rep.get("passed"):
            return "failed", "; ".join((rep.get("failures") or by["failed"])[:3]), details
        return "passed", f"{len(by['ran'])} steps ran, {len(skipped)} skipped; engines {','.join(engines)}", details

    c.run("deploy-gpu", f"alexnet-deploy on the GPU (engines {','.join(engines)})",
          [["alexnet-deploy", "--weights", str(ckpt), "--out", str(deploy_dir), "--targets", targets,
            "--engines", ",".join(engines), "--batch-sizes", "1,32", "--bench-duration-s", "0.5",
            "--no-roofline", "--no-sensitivity", "--parity-images", "300", "--calib-images", "256",
            *(["--trt-library", trt_lib] if trt_lib and "trt" in engines else [])]],
          needs=("gpu", "ort-cuda", ckpt), timeout=300, check=deploy_check)

    def verify_check(path):
        def check(outputs):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                return "failed", f"no verify JSON: {exc}", None
            rows = data.get("rows") or []
            if not data.get("passed"):
                return "failed", "; ".join(data.get("failures") or ["not passed"])[:300], {"rows": len(rows)}
            agree = ", ".join(f"{r['artifact']} {100 * (r.get('metrics') or {}).get('top1_agreement', 0):.1f}%"
                              for r in rows)
            return "passed", f"{len(rows)} artifacts pass (top-1 agreement: {agree})", None
        return check

    cpu_src = Path(c.args.cpu_folder) if c.args.cpu_folder else None
    cpu_dir = w / "cpu-built"
    if cpu_src and not c.dry_run and not c.skip_all:
        shutil.rmtree(cpu_dir, ignore_errors=True)
        shutil.copytree(cpu_src, cpu_dir, symlinks=True)  # verified where it lands, as a user copies it
    for engine in ("ort-cuda", "ort-trt", "trt"):
        for which, folder, extra in (("gpu", deploy_dir, (deploy_dir / "report.json",)),
                                     ("cpu", cpu_dir, ("cpu-folder",))):
            needs = ("gpu", engine, *extra)
            if which == "cpu" and engine == "trt":
                c.row("verify-cpu-trt", "alexnet-verify --engine trt of the CPU-built folder", "skipped",
                      c.skip_all or "a CPU host builds no TensorRT engines (they are built on the target: deploy-gpu)")
                continue
            js = w / "verify" / f"{which}-{engine}.json"
            c.run(f"verify-{which}-{engine}",
                  f"alexnet-verify --engine {engine} of the {'GPU' if which == 'gpu' else 'CPU'}-built folder",
                  [["alexnet-verify", str(folder), "--engine", engine, "--json", str(js)]], needs=needs,
                  timeout=120, check=verify_check(js))

    # 5. benchmarks: torch-cuda (with its device-only split), ort-cuda, trt (device-side split; CUDA graphs)
    def bench_check(path):
        def check(outputs):
            try:
                rows = json.loads(path.read_text())["rows"]
            except (OSError, ValueError, KeyError) as exc:
                return "failed", f"no bench JSON: {exc}", None
            for r in rows:
                c.bench.append({k: r.get(k) for k in ("model", "engine", "provider", "precision", "batch", "mode",
                                                      "skipped", "p50_ms", "p99_ms", "mean_ms", "throughput_ips",
                                                      "h2d_ms", "compute_ms", "d2h_ms")} | {"source": path.name})
            done = [r for r in rows if not r.get("skipped")]
            skipped = [f"{r['model']} {r['engine']}: {r['skipped']}" for r in rows if r.get("skipped")]
            if not done:
                return "failed", "no row measured: " + "; ".join(skipped)[:250], None
            return "passed", f"{len(done)} rows measured" + (f", {len(skipped)} skipped ({skipped[0]})" if skipped else ""), None
        return check

    common = ["--batch-sizes", "1,4" if c.rehearse else BENCH_BATCHES, "--duration-s", "0.3" if c.rehearse else "1",
              "--warmup-ms", "300", "--no-roofline"]
    bj = w / "bench" / "bench-cuda.json"
    c.run("bench-cuda", "alexnet-bench torch-cuda (end-to-end + device-only) and ort-cuda, cifar10 + torchvision",
          [["alexnet-bench", str(digits_onnx), str(tv_onnx), "--engine", "torch-cuda,ort-cuda", *common,
            "--json", str(bj)]], needs=("gpu", "ort-cuda", digits_onnx, tv_onnx), timeout=240, check=bench_check(bj))
    plans = [trt_dir / "cifar10-digits.plan", trt_dir / "torchvision-random.plan"]
    c.run("export-trt-bench", "alexnet-export trt: cifar10 and torchvision engines, batch 1..256",
          [["alexnet-export", "trt", str(m), "-o", str(p), "--min-batch", "1", "--opt-batch", "32",
            "--max-batch", "256", *lib_opt] for m, p in zip((digits_onnx, tv_onnx), plans)],
          needs=("gpu", "trt", tv_onnx), timeout=300)
    for rid, graph in (("bench-trt", []), ("bench-trt-graph", ["--cuda-graph"])):
        bj = w / "bench" / f"{rid}.json"
        c.run(rid, "alexnet-bench trt (device-side split: H2D / compute / D2H)" + (", CUDA graphs" if graph else ""),
              [["alexnet-bench", *map(str, plans), "--engine", "trt", *common, *graph, "--json", str(bj)]],
              needs=("gpu", "trt", *plans), timeout=180, check=bench_check(bj))

    # 6. alexnet-stream on the video, 7. one alexnet-serve request, both on ort-cuda
    sj = {e: w / "stream" / f"{e}.jsonl" for e in ("ort", "ort-cuda")}

    def stream_check(outputs):
        def top1(p):
            rows = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip().startswith("{")]
            return [(r.get("frame"), r["top"][0]["label"]) for r in rows if r.get("top")]
        try:
            cpu, gpu = top1(sj["ort"]), top1(sj["ort-cuda"])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            return "failed", f"unreadable JSON lines: {exc}", None
        if len(gpu) != VIDEO_FRAMES or cpu != gpu:
            return "failed", (f"{len(gpu)} frames (expected {VIDEO_FRAMES}); "
                              f"{sum(a != b for a, b in zip(cpu, gpu))} top-1 differ from --engine ort"), None
        return "passed", f"{len(gpu)} frames, per-frame top-1 identical to --engine ort", None

    c.run("stream-ort-cuda", "alexnet-stream --engine ort-cuda on a generated video",
          [["alexnet-stream", str(digits_onnx), str(video), "--engine", e, "--jsonl", str(sj[e]), "--no-progress",
            *(["--output", str(w / "stream" / "annotated.mp4"), "--summary", str(w / "stream" / "summary.json")]
              if e == "ort-cuda" else [])] for e in ("ort", "ort-cuda")],
          needs=("gpu", "ort-cuda", "av", digits_onnx, video), timeout=120, check=stream_check)

    port = _free_port() if not c.dry_run else 8000
    url = f"http://127.0.0.1:{port}"
    c.run("serve-ort-cuda", "alexnet-serve --engine ort-cuda: one classify request, same answer as alexnet-predict",
          [[*helper, "serve-request", url, str(images), str(pred["ort-cuda"]), "alexnet",
            "ort" if c.rehearse else "ort-cuda", "--",
            "alexnet-serve", str(digits_onnx), "--engine", "ort-cuda", "--name", "alexnet", "--host", "127.0.0.1",
            "--port", str(port)]],
          needs=("gpu", "ort-cuda", "serve", pred["ort-cuda"]), timeout=150,
          check=lambda outputs: ("passed", one_line(outputs[-1][1]), None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- reporting
def markdown(report: dict) -> str:
    m = report["machine"]
    gpu, ort, torch = m.get("gpu") or {}, m.get("onnxruntime") or {}, m.get("torch") or {}
    title = "GPU check" + (" — CPU REHEARSAL (CPU engines stood in for the CUDA ones)" if report.get("rehearsal_on_cpu") else "")
    pre = next((r["reason"] for r in report["rows"] if r["id"] == "preflight"), None)
    lines = [f"# {title} ({report['finished_utc']})", "",
             f"- GPU: {gpu.get('name', '-')}, compute capability {gpu.get('compute_capability', '-')}, "
             f"{gpu.get('memory', '-')}; driver {gpu.get('driver', '-')} (CUDA {m.get('driver_cuda') or '-'})",
             f"- CPU: {m.get('cpu')}, {m.get('cores')} cores, load {m.get('loadavg')}; Python {m.get('python')}",
             f"- torch {torch.get('version', '-')} (CUDA {torch.get('cuda', '-')}); onnxruntime {ort.get('version', '-')}"
             f" ({'onnxruntime-gpu' if ort.get('gpu_distribution') else 'CPU build'}, built for CUDA "
             f"{ort.get('cuda_version', '-')}; providers {', '.join(ort.get('providers') or []) or '-'})",
             "- other libraries: " + ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items() if v),
             f"- result: **{report['result']}** (exit {report['exit_code'] if report['exit_code'] is not None else '-'}) in {report['seconds']:.0f} s", "",
             "| step | status | s | details |", "| --- | --- | ---: | --- |"]
    for r in report["rows"]:
        why = "as preflight" if r["id"] != "preflight" and pre and r["reason"] == pre else r["reason"]
        lines.append(f"| {r['id']} | {r['status']} | {r['seconds']:.1f} | {_md(r['title'] + (': ' + why if why else ''))} |")
    if report.get("bench"):
        lines += ["", "| model | engine | batch | mode | p50 ms | p99 ms | img/s | split (H2D / compute / D2H ms) |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for b in report["bench"]:
            if b.get("skipped"):
                lines.append(f"| {b['model']} | {b['engine']} | - | - | | | | skipped: {_md(b['skipped'])} |")
                continue
            split = " / ".join(f"{b[k]:.3f}" for k in ("h2d_ms", "compute_ms", "d2h_ms") if b.get(k) is not None)
            graph = " (CUDA graph)" if "graph" in b.get("source", "") else ""
            lines.append(f"| {b['model']} | {b['engine']}{graph} | {b['batch']} | {b['mode']} | {_f(b.get('p50_ms'))} | "
                         f"{_f(b.get('p99_ms'))} | {_f(b.get('throughput_ips'), 0)} | {split} |")
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _f(v, nd: int = 3) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def machine_summary(p: dict) -> dict:
    smi = p.get("nvidia_smi") or {}
    torch = p.get("torch") or {}
    gpu = {k: smi[k] for k in ("name", "driver", "compute_capability", "memory", "count") if k in smi}
    if not gpu.get("name") and torch.get("device"):
        gpu.update(name=torch["device"], compute_capability=torch.get("capability"))
    libs = {**(p.get("preinstalled") or {}), **(p.get("wheels") or {}), **(p.get("optional_wheels") or {}),
            **(p.get("trt_libraries") or {}), "cuda-bindings": p.get("cuda_bindings"), "libnvinfer": p.get("libnvinfer")}
    return {"gpu": gpu, "driver_cuda": (p.get("libcuda") or {}).get("driver_cuda"), "torch": torch,
            "onnxruntime": p.get("onnxruntime"), "libraries": libs, "cpu": p.get("cpu"), "cores": p.get("cores"),
            "loadavg": p.get("loadavg"), "python": p.get("python"), "executable": p.get("executable")}


LOG_ARCHIVE = "gpu-check-logs.tar.gz"


def archive_logs(work: Path, out: Path) -> None:
    """Every step's output and the small result files, so that a failure on a lent machine can be read without
    another run there. Whatever does not fit (16 MiB a file comes back) is left out."""
    picks = [work / "logs", work / "pytest-gpu.xml", work / "deploy-gpu" / "report.json",
             work / "deploy-gpu" / "report.md", work / "verify", work / "bench", work / "stream" / "summary.json",
             *work.glob("predict-*.json"), *work.glob("*.serve.log")]
    tmp = out / f".{LOG_ARCHIVE}.tmp"
    with tarfile.open(tmp, "w:gz") as t:
        for p in picks:
            if p.exists():
                t.add(p, arcname=str(p.relative_to(work)),
                      filter=lambda ti: ti if ti.size < 4 << 20 else None)
    if tmp.stat().st_size < 15 << 20:
        os.replace(tmp, out / LOG_ARCHIVE)
    else:
        tmp.unlink()


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu-check.json", json.dumps(report, indent=2, default=str)), ("gpu-check.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


# --------------------------------------------------------------------------------------------------- commands
def console_shims(bindir: Path, python: str) -> list[str]:
    """alexnet-* console scripts for this checkout (the GPU machine has no installed alexnet-deploy)."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    bindir.mkdir(parents=True, exist_ok=True)
    for name, target in scripts.items():
        mod, func = target.split(":")
        p = bindir / name
        p.write_text(f"#!{python}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\nfrom {mod} import {func}\n"
                     f"sys.exit({func}())\n")
        p.chmod(0o755)
    return sorted(scripts)


def subprocess_env(bindir: Path, site: Path | None) -> dict:
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(site)] if site else []) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


def run_probe(python: str, env: dict) -> dict:
    r = subprocess.run([python, str(Path(__file__).resolve()), "probe"], env=env, capture_output=True, text=True,
                       timeout=180)
    try:
        return json.loads(r.stdout)
    except ValueError:
        die(f"the probe of this machine failed: {one_line(r.stderr) or 'no output'}")


def cmd_run(args) -> int:
    t_start = time.monotonic()
    python = os.path.abspath(args.python or sys.executable)
    work = Path(args.work).resolve()
    out = Path(args.out or os.environ.get("OUT") or REPO / "artifacts" / "gpu-check").resolve()
    for name, p in (("--work", work), ("--out", out)):
        if p == REPO or p in REPO.parents:
            die(f"{name} {p} is the checkout or above it; give a folder of its own")
    if work == out or work in out.parents or out in work.parents:
        die(f"--work {work} and --out {out} must not contain each other ($OUT gets only the report files)")
    if args.budget_s <= 0:
        die("--budget-s must be positive")
    if args.cpu_folder:
        cf = Path(args.cpu_folder)
        if not (cf / "report.json").is_file() or not (cf / "golden").is_dir():
            die(f"--cpu-folder {cf} is not a deployment folder (no report.json and golden/ in it); build one with "
                "scripts/check_gpu.sh build-cpu-folder DIR")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        die(f"--checkpoint {args.checkpoint} not found (an alexnet-train checkpoint of the cifar10 variant on digits)")
    wheel_src = Path(args.wheels) if args.wheels else None
    if wheel_src and not wheel_src.is_dir():
        die(f"--wheels {wheel_src} is not a folder (stage the gpu-wheels parts there)")
    if not args.dry_run:
        if work.exists():
            if not (work / ".alexnet-check-gpu").exists() and any(work.iterdir()):
                die(f"--work {work} exists and is not a folder of this script; remove it or give another")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        (work / ".alexnet-check-gpu").write_text("scratch folder of scripts/check_gpu.py; removed by the next run\n")
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="alexnet-check-gpu-dry.")) if args.dry_run else work
    site = work.parent / f"{work.name}-site"  # installed wheels survive a rerun (the work folder does not)
    bindir = scratch / "bin"
    console_shims(bindir, python)
    env = subprocess_env(bindir, site if site.is_dir() and not args.probe_json else None)
    if args.probe_json:  # a probe recorded elsewhere (the GPU machine's): plan, or check the preflight, against it
        try:
            p = json.loads(Path(args.probe_json).read_text())
            p = p.get("probe", p)  # a whole gpu-check.json will do too
        except (OSError, ValueError) as exc:
            die(f"--probe-json {args.probe_json}: {exc}")
        say(f"{PROG}: using the probe recorded in {args.probe_json} (nothing is installed)")
    else:
        say(f"{PROG}: probing this machine ({python})")
        p = run_probe(python, env)
    installed = ""
    skip_all = None if args.rehearse_on_cpu else gpu_problem(p)
    cuda = not args.rehearse_on_cpu
    src = None
    if not skip_all and not args.dry_run and not args.probe_json and missing_wheels(p, cuda):
        src = wheel_src or default_wheel_source()
        if src:
            installed = install_wheels(src, site, python)
            say(f"{PROG}: installed {installed}")
            env = subprocess_env(bindir, site)
            p = run_probe(python, env)
    bad = None
    if skip_all:
        bad = skip_all
    elif missing_wheels(p, cuda):
        where = ("a recorded probe (--probe-json): nothing installed" if args.probe_json else
                 f"not among the wheels installed from {src}" if src else
                 "no staged wheels found (--wheels DIR, $CHECK_GPU_WHEELS, /tmp/stage, .gpu-wheels)")
        bad = (f"missing wheels: {'; '.join(missing_wheels(p, cuda))}; {where}: stage them with "
               "../shared/tools/gpu-wheels (list: scripts/check_gpu.sh wheels; device calls: docs/gpu-check.md)")
    elif cuda and driver_problem(p):
        bad = driver_problem(p)
    trt_libs = [k for k in TRT_MODULES if k in (p.get("trt_libraries") or {})
                and not str(p["trt_libraries"][k]).startswith("import failed")]
    ort = p.get("onnxruntime") or {}
    caps = {
        "gpu": (not skip_all, skip_all or ""),
        "ort-cuda": ("CUDAExecutionProvider" in ort.get("providers", []) or not cuda,
                     "onnxruntime-gpu's CUDA provider is missing"),
        "ort-trt-listed": ("TensorrtExecutionProvider" in ort.get("providers", []) and bool(p.get("libnvinfer")),
                           "ORT's TensorRT EP needs TensorRT's libnvinfer, which is not installed here "
                           "(the tensorrt wheels are > 1 GB, over the carry limit)"
                           if "TensorrtExecutionProvider" in ort.get("providers", [])
                           else "this onnxruntime has no TensorrtExecutionProvider"),
        "trt-library": (bool(trt_libs), "no TensorRT runtime here: neither tensorrt nor tensorrt_rtx is installed "
                                        "(optional wheels: scripts/check_gpu.sh wheels)"),
        "av": (bool((p.get("wheels") or {}).get("av")), "PyAV (av) is not installed"),
        "serve": (all((p.get("wheels") or {}).get(d) for d in ("fastapi", "uvicorn", "python-multipart")),
                  "the serve stack (fastapi, uvicorn, python-multipart) is not installed"),
        "cpu-folder": (bool(args.cpu_folder), "no CPU-built folder given (--cpu-folder; build one on the CPU host "
                                              "with scripts/check_gpu.sh build-cpu-folder DIR)"),
        "ort-trt": (None, ""), "trt": (None, ""),
    }
    if args.probe_json and not args.dry_run and not bad:
        die("--probe-json describes another machine: use it with --dry-run (a real run probes this one)")
    if bad and not args.dry_run:
        skip_all = bad
    check = Check(args, work, out, env, caps, args.dry_run, skip_all, t_start)
    check.trt_library = trt_libs[0] if trt_libs else None  # tensorrt first: its runtime runs data-centre GPUs
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    if not args.dry_run and not bad:  # a run stopped from outside still leaves the rows done so far
        check.on_row = lambda: write_report(out, make_report(args, check, p, work, t_start, None,
                                                             "incomplete (still running, or stopped)"))
    if args.dry_run:
        say(f"{PROG}: dry run: the steps and the commands it would run (PATH gets {bindir})")
    if args.dry_run:
        check.row("preflight", "GPU, driver and the staged wheels", "planned", f"here it would skip: {bad}" if bad else "")
    else:
        check.row("preflight", "GPU, driver and the staged wheels", "failed" if bad else "passed", bad or installed)
    run_steps(check, python)
    failed = [r for r in check.rows if r["status"] == "failed" and not bad]
    code = 0 if args.dry_run else (2 if bad else (1 if failed else 0))
    result = "dry run" if args.dry_run else "bad input" if bad else "failed" if failed else "passed"
    write_report(out, make_report(args, check, p, work, t_start, code, result))
    if args.dry_run:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        archive_logs(work, out)
    say(f"{PROG}: wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}"
        + ("" if args.dry_run else f" (step logs: {out / LOG_ARCHIVE})"))
    if bad and not args.dry_run:
        die(bad, 2)
    if failed:
        die(f"FAILED: {len(failed)} step(s): " + "; ".join(f"{r['id']}: {r['reason']}" for r in failed)[:600], 1)
    say(f"{PROG}: {'dry run done' if args.dry_run else 'PASSED'} in {time.monotonic() - t_start:.0f} s")
    return 0


def make_report(args, check, p: dict, work: Path, t_start: float, code: int | None, result: str) -> dict:
    return {"schema": SCHEMA, "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dry_run": args.dry_run, "rehearsal_on_cpu": args.rehearse_on_cpu, "exit_code": code, "result": result,
            "seconds": round(time.monotonic() - t_start, 1), "budget_s": args.budget_s,
            "machine": machine_summary(p), "probe": p, "rows": check.rows, "bench": check.bench,
            "expected_wheels": [f"{d}=={v}" for d, v, _, _ in REQUIRED_WHEELS],
            "optional_wheels": [f"{d}=={v}" for d, v, _, _ in OPTIONAL_WHEELS],
            "work": str(work), "cpu_folder": args.cpu_folder}


def cmd_build_cpu_folder(args) -> int:
    """On the CPU host: train the digits checkpoint and deploy it (ONNX FP32/FP16/INT8 + golden set, CPU
    engines), the folder the GPU machine verifies on its engines. Small enough to carry (a few MB)."""
    dest = Path(args.dir).resolve()
    if dest.exists() and any(dest.iterdir()) and not (dest / "report.json").is_file():
        die(f"{dest} exists and is not a deployment folder; give a new folder")
    if REPO in dest.parents:  # carried to the GPU machine as an ignored path: keep it out of git
        top = dest.relative_to(REPO).parts[0]
        exclude = REPO / ".git" / "info" / "exclude"
        if (REPO / ".git").is_dir() and f"/{top}/" not in (exclude.read_text().split() if exclude.exists() else []):
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with open(exclude, "a") as f:
                f.write(f"/{top}/\n")
    tmp = dest.parent / f".{dest.name}.work"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bindir = tmp / "bin"
    console_shims(bindir, os.path.abspath(args.python or sys.executable))
    env = subprocess_env(bindir, None)
    steps = [["alexnet-train", "--variant", "cifar10", "--dataset", "digits", "--epochs", "30", "--seed", "0",
              "--no-progress", "-o", str(tmp / "digits.pt")],
             ["alexnet-deploy", "--weights", str(tmp / "digits.pt"), "--out", str(dest), "--targets", "onnx",
              "--engines", "torch,ort", "--batch-sizes", "1,8", "--bench-duration-s", "0.5", "--no-roofline",
              "--no-sensitivity", "--parity-images", "300", "--calib-images", "256"]]
    for cmd in steps:
        say(f"$ {shlex.join(cmd)}")
        r = subprocess.run(cmd, env=env, cwd=tmp)
        if r.returncode != 0:
            die(f"{cmd[0]} failed (exit {r.returncode})", 1 if r.returncode == 1 else 2)
    kept = dest.parent / "digits.pt"  # the checkpoint it was built from: --checkpoint on the GPU saves the training
    os.replace(tmp / "digits.pt", kept)
    shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    say(f"{PROG}: CPU-built deployment folder {dest} ({size / 2**20:.1f} MiB); its checkpoint: {kept} "
        f"({kept.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_inputs(args) -> int:
    """Digits and two photos as PNGs, and VIDEO_FRAMES digit frames as a lossless FFV1 video."""
    import av
    from PIL import Image

    from alexnet_deploy.data.datasets import load_digits

    work = Path(args.work)
    out = work / "images"
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits("heldout")
    for i in range(10):
        digits.image(i).convert("RGB").resize((64, 64)).save(out / f"digit{i:02d}.png")
    rng = __import__("numpy").random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype="uint8")).save(out / f"noise{i}.png")
    with av.open(str(work / "digits.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv444p"
        for i in range(VIDEO_FRAMES):
            img = digits.image(i).convert("RGB").resize((VIDEO_SIZE, VIDEO_SIZE))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"inputs: {len(list(out.iterdir()))} images, {VIDEO_FRAMES}-frame video")
    return 0


def cmd_capture(args) -> int:
    """Run a command with its stdout written to a file (so the steps need no shell)."""
    with open(args.file, "w") as f:
        return subprocess.run(args.command, stdout=f).returncode


def cmd_serve_request(args) -> int:
    """Start alexnet-serve (the command after --), wait until it is ready, send one classify request, compare
    with alexnet-predict's answer, stop it with SIGTERM."""
    import urllib.error
    import urllib.request

    log = open(Path(args.predict).with_suffix(".serve.log"), "w")
    # same process group as this helper (check_gpu.py run gave it its own): stopping the step stops the server
    proc = subprocess.Popen(args.command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log.flush()
                die(f"alexnet-serve exited ({proc.returncode}) before it was ready: "
                    f"{one_line(Path(log.name).read_text())}", 1)
            try:
                with urllib.request.urlopen(f"{args.url}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                die("alexnet-serve was not ready within 90 s", 1)
            time.sleep(0.5)
        with urllib.request.urlopen(f"{args.url}/v2/models/{args.name}", timeout=10) as r:
            meta = json.loads(r.read())
        engine = (meta.get("parameters") or {}).get("engine") or meta.get("engine") or json.dumps(meta)
        if args.engine not in str(engine):
            die(f"the server runs {engine}, not {args.engine}", 1)
        first = json.loads(Path(args.predict).read_text())["results"][0]
        body = (Path(args.images) / Path(first["image"]).name).read_bytes()
        req = urllib.request.Request(f"{args.url}/models/{args.name}/classify", data=body, method="POST",
                                     headers={"content-type": "application/octet-stream"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        ms = (time.perf_counter() - t) * 1e3
        got, want = answer["top"][0], first["top"][0]
        if got["label"] != want["label"] or abs(got["probability"] - want["probability"]) > 1e-3:
            die(f"alexnet-serve answered {got} for {first['image']}, alexnet-predict --engine {args.engine} said {want}", 1)
        print(f"serve: {Path(first['image']).name} -> {got['label']} ({got['probability']:.4f}) in {ms:.0f} ms on "
              f"{args.engine}, same as alexnet-predict")
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        die(f"classify request failed: {exc}", 1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="check_gpu.sh", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or --dry-run: list) the GPU check")
    r.add_argument("--dry-run", action="store_true", help="list the steps and commands; run nothing")
    r.add_argument("--out", help="report folder (default: $OUT, else artifacts/gpu-check)")
    r.add_argument("--work", default=DEFAULT_WORK, help=f"scratch folder, emptied first (default {DEFAULT_WORK})")
    r.add_argument("--cpu-folder", help="a deployment folder built on a CPU host (build-cpu-folder), to verify here")
    r.add_argument("--wheels", help="staged wheels: a folder of .whl files or of gpu-wheels parts (default: "
                                    "$CHECK_GPU_WHEELS, /tmp/stage, .gpu-wheels when the wheels are not importable)")
    r.add_argument("--checkpoint", help="a digits checkpoint (alexnet-train) to deploy instead of training one here")
    r.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run, wheel install included; a step "
                   "that would run past it is stopped and fails (default %(default)s)")
    r.add_argument("--python", help="the interpreter with torch (default: this one)")
    r.add_argument("--probe-json", help="take the machine's description from this JSON (a probe, or the probe in a "
                                        "gpu-check.json from the GPU machine) instead of probing here")
    r.add_argument("--rehearse-on-cpu", action="store_true",
                   help="run every step on the CPU engines instead (torch, ort) to check the plumbing on a host "
                        "without a GPU; proves nothing about a GPU")
    b = sub.add_parser("build-cpu-folder", help="on the CPU host: the deployment folder to carry to the GPU machine")
    b.add_argument("dir")
    b.add_argument("--python")
    sub.add_parser("wheels", help="the wheels the GPU machine needs")
    sub.add_parser("probe", help="(internal) this machine as JSON")
    i = sub.add_parser("inputs", help="(internal) test images and video")
    i.add_argument("work")
    cap = sub.add_parser("capture", help="(internal) COMMAND > FILE")
    cap.add_argument("file")
    cap.add_argument("command", nargs=argparse.REMAINDER)
    s = sub.add_parser("serve-request", help="(internal) one classify request to a fresh alexnet-serve")
    for a in ("url", "images", "predict", "name", "engine"):
        s.add_argument(a)
    s.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "build-cpu-folder":
        return cmd_build_cpu_folder(args)
    if args.cmd == "wheels":
        say(wheels_text())
        return 0
    if args.cmd == "probe":
        print(json.dumps(probe()))
        return 0
    if args.cmd == "inputs":
        return cmd_inputs(args)
    if args.cmd == "capture":
        return cmd_capture(args)
    return cmd_serve_request(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        die("interrupted", 130)
