"""Jetson power: sample ``tegrastats`` during a run and parse its lines (Orin VDD_IN, Nano/TX2 POM_5V_IN)."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading

# "VDD_IN 4797mW/4797mW" (Orin, Xavier: current/average) or "POM_5V_IN 3086/3086" (Nano, TX2)
_TOTAL = re.compile(r"\b(VDD_IN|POM_5V_IN|VIN_SYS_5V0)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+)\s+(\d+)mW/(\d+)mW")
_GPU = re.compile(r"GR3D_FREQ\s+(\d+)%")


def parse_line(line: str) -> dict | None:
    """One tegrastats line -> {"power_mw": total input power now, "rails": {...}, "gpu_util": %} or None."""
    m = _TOTAL.search(line)
    rails = {name: int(cur) for name, cur, _ in _RAIL.findall(line)}
    if not m and not rails:
        return None
    total = int(m.group(2)) if m else sum(rails.values())
    g = _GPU.search(line)
    return {"power_mw": total, "rails": rails, "gpu_util": int(g.group(1)) if g else None}


def summarize(samples: list[dict], images: int, seconds: float) -> dict:
    if not samples:
        return {}
    avg_w = sum(s["power_mw"] for s in samples) / len(samples) / 1000.0
    joules = avg_w * seconds
    return {"samples": len(samples), "avg_power_w": avg_w, "energy_j": joules,
            "images_per_joule": images / joules if joules > 0 else None}


class TegraStats:
    """Context manager that samples tegrastats every ``interval_ms`` when it is installed (else no-op)."""

    def __init__(self, interval_ms: int = 100):
        self.interval_ms = interval_ms
        self.samples: list[dict] = []
        self.available = shutil.which("tegrastats") is not None
        self._proc = None

    def __enter__(self) -> "TegraStats":
        if self.available:
            self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            parsed = parse_line(line)
            if parsed:
                self.samples.append(parsed)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._thread.join(timeout=2)
