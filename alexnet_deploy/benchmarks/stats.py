"""Latency statistics, stability check and the regression gate (pure numpy, tested on known sequences)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Summary:
    n: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    window_cv: float  # coefficient of variation of the per-window medians
    stable: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def percentile(values_ms, q: float) -> float:
    """Nearest-rank percentile (as trtexec and MLPerf report): the smallest value with >= q% at or below it."""
    v = np.sort(np.asarray(values_ms, dtype=np.float64))
    if v.size == 0:
        raise ValueError("no latencies")
    rank = max(1, int(np.ceil(q / 100.0 * v.size)))
    return float(v[rank - 1])


def summarize(latencies_ms, windows: int = 5, cv_threshold: float = 0.05) -> Summary:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("no latencies")
    k = min(windows, lat.size)
    medians = np.array([np.median(w) for w in np.array_split(lat, k)])
    cv = float(medians.std() / medians.mean()) if k > 1 and medians.mean() > 0 else 0.0
    return Summary(int(lat.size), float(lat.mean()), float(lat.min()), float(lat.max()),
                   *(percentile(lat, q) for q in PERCENTILES), cv, cv <= cv_threshold)


def regression(current: dict, baseline: dict, max_regression: float) -> tuple[bool, float, float]:
    """Is ``current`` slower than ``baseline`` beyond ``max_regression`` (fraction) plus measured noise?

    Compares p50 latency; noise is the larger window CV of the two runs times the baseline p50.
    Returns (regressed, ratio, allowed_ratio)."""
    base, cur = float(baseline["p50_ms"]), float(current["p50_ms"])
    noise = max(float(baseline.get("window_cv", 0.0)), float(current.get("window_cv", 0.0)))
    allowed = 1.0 + max_regression + noise
    ratio = cur / base if base > 0 else float("inf")
    return ratio > allowed, ratio, allowed
