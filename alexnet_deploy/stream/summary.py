"""Per-stage latency statistics and the end-of-run summary of a stream."""
from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

STAGES = ("decode", "preprocess", "infer", "output", "end_to_end")
# A run of days at 30 fps would otherwise keep millions of samples per stage: past this many, a uniform
# reservoir sample (Vitter's algorithm R, seeded) stands in for all of them; p50/p99 stay unbiased.
LATENCY_SAMPLES = 100_000
PERCENTILES = (50, 99)
FPS_WINDOW_S = 1.0  # the FPS drawn on frames and shown in the progress bar: over the last second


class Reservoir:
    """Uniform sample of at most ``capacity`` values out of all ``count`` added."""

    def __init__(self, capacity: int = LATENCY_SAMPLES, seed: int = 0):
        self.capacity = capacity
        self.count = 0
        self.values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self.values[j] = value

    def percentiles(self, qs=PERCENTILES) -> dict[str, float]:
        if not self.values:
            return {}
        arr = np.asarray(self.values, dtype=np.float64)
        return {f"p{q}": float(np.percentile(arr, q)) for q in qs} | {"mean": float(arr.mean())}


class RateMeter:
    """Frames per second over the last ``window_s`` seconds (what the overlay and the progress bar show)."""

    def __init__(self, window_s: float = FPS_WINDOW_S):
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        self._times.append(now)
        while len(self._times) > 2 and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclass
class StreamStats:
    """Counters and latency of one stream, or (with ``streams``) the total of a run over several."""

    source: str = ""
    engine: str = ""
    live: bool = False
    batch: int = 1
    decoded: int = 0  # frames the source produced
    frames: int = 0  # frames classified and written out
    dropped: int = 0  # live sources: frames dropped because inference or decoding fell behind
    skipped: int = 0  # live sources: frames above --max-fps
    reconnects: int = 0  # --reconnect: times the source was reopened after a break
    unreadable: int = 0  # image files skipped (not a regular file, undecodable)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    stopped_by: str = "end of stream"  # end of stream | interrupted | --max-frames | --duration | error
    error: str | None = None  # why the stream stopped, when it broke off
    stream: int | None = None  # the stream id (several sources in one run)
    latency: dict[str, Reservoir] = field(default_factory=lambda: {s: Reservoir() for s in STAGES})
    # frame age: result time minus the time the source says the frame was taken at (its timestamp mapped onto
    # the wall clock), or minus the time it was decoded when the source has no clock of its own
    age: Reservoir = field(default_factory=Reservoir)
    streams: list["StreamStats"] = field(default_factory=list)

    def add(self, stages_s: dict[str, float], age_s: float | None = None) -> None:
        self.frames += 1
        for name, seconds in stages_s.items():
            self.latency[name].add(seconds)
        if age_s is not None:
            self.age.add(age_s)

    def total_from_streams(self) -> None:
        """Counters of the run as the sum of its streams' (latency and age are added frame by frame)."""
        if not self.streams:
            return
        for name in ("decoded", "dropped", "skipped", "reconnects", "unreadable"):
            setattr(self, name, sum(getattr(s, name) for s in self.streams))

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def _counters(self) -> dict:
        return {"frames": self.frames, "decoded": self.decoded, "dropped": self.dropped, "skipped": self.skipped,
                "reconnects": self.reconnects, "unreadable": self.unreadable}

    def _age(self) -> dict:
        return {k: round(v * 1e3, 3) for k, v in self.age.percentiles().items()}

    def to_dict(self) -> dict:
        d = {
            "source": self.source, "engine": self.engine, "live": self.live, "batch": self.batch,
            **self._counters(),
            "seconds": round(self.seconds, 4), "fps": round(self.fps, 3), "stopped_by": self.stopped_by,
            "error": self.error,
            "latency_ms": {
                name: {k: round(v * 1e3, 3) for k, v in res.percentiles().items()}
                for name, res in self.latency.items() if res.count
            },
            "age_ms": self._age(),
        }
        if self.streams:
            d["streams"] = [{"stream": s.stream, "source": s.source, "live": s.live, **s._counters(),
                             "stopped_by": s.stopped_by, "error": s.error, "age_ms": s._age(),
                             "end_to_end_ms": {k: round(v * 1e3, 3)
                                               for k, v in s.latency["end_to_end"].percentiles().items()}}
                            for s in self.streams]
        return d

    def format(self) -> str:
        d = self.to_dict()
        more = f", reconnects {d['reconnects']}" if d["reconnects"] else ""
        more += f", unreadable {d['unreadable']}" if d["unreadable"] else ""
        lines = [
            f"{d['frames']} frames in {d['seconds']:.2f} s = {d['fps']:.1f} FPS ({self.engine}, batch {self.batch}); "
            f"decoded {d['decoded']}, dropped {d['dropped']}, skipped {d['skipped']}{more}; "
            f"stopped by {self.stopped_by}",
        ]
        if len(self.streams) > 1:
            for s in d["streams"]:
                age = f"; age p50 {s['age_ms']['p50']:.1f} ms, p99 {s['age_ms']['p99']:.1f} ms" if s["age_ms"] else ""
                rec = f", reconnects {s['reconnects']}" if s["reconnects"] else ""
                why = f": {s['error']}" if s["error"] else ""
                lines.append(f"stream {s['stream']} ({s['source']}): {s['frames']} frames, decoded {s['decoded']}, "
                             f"dropped {s['dropped']}, skipped {s['skipped']}{rec}{age}; "
                             f"stopped by {s['stopped_by']}{why}")
        if d["latency_ms"]:
            lines.append(f"{'latency ms':<12}{'p50':>10}{'p99':>10}{'mean':>10}")
            for name, p in d["latency_ms"].items():
                lines.append(f"{name:<12}{p['p50']:>10.2f}{p['p99']:>10.2f}{p['mean']:>10.2f}")
            if d["age_ms"]:
                p = d["age_ms"]
                lines.append(f"{'frame age':<12}{p['p50']:>10.2f}{p['p99']:>10.2f}{p['mean']:>10.2f}")
        return "\n".join(lines)
