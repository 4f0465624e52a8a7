"""Running figures of the node for /diagnostics: rates, latency percentiles, counters and stage times."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np


class RateMeter:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / self.window

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


class FrameStats:
    """Counters and timings shared by the subscription callback, the worker and the diagnostics timer.

    Args:
        window: seconds over which rates are measured.
        history: how many recent frames latency and stage-time percentiles are taken over.
    """

    def __init__(self, window: float = 5.0, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._received = RateMeter(window)
        self._processed = RateMeter(window)
        self._lost = RateMeter(window)
        self._latency: deque[float] = deque(maxlen=history)
        self._stages: dict[str, deque[float]] = {}
        self._history = history
        self.counts = {"received": 0, "processed": 0, "dropped": 0, "rejected": 0, "failed": 0,
                       "input_frames_lost": 0}

    def count(self, name: str, now: float | None = None) -> None:
        """Add one to counter ``name``; received and processed frames also feed their rate meters."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.counts[name] += 1
            if name == "received":
                self._received.tick(now)
            elif name == "processed":
                self._processed.tick(now)

    def add_lost(self, count: int, now: float | None = None) -> None:
        """``count`` input frames the middleware lost before they reached the subscription."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.counts["input_frames_lost"] += count
            for _ in range(count):
                self._lost.tick(now)

    def add_latency(self, seconds: float) -> None:
        """One frame's latency from its image stamp to its masks being published."""
        with self._lock:
            self._latency.append(seconds)

    def add_stage(self, name: str, seconds: float) -> None:
        """One frame's time in processing stage ``name`` (e.g. decode, model, publish)."""
        with self._lock:
            self._stages.setdefault(name, deque(maxlen=self._history)).append(seconds)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Rates (Hz), latency p50/p95 (ms), stage p50 (ms) and counters; NaN where nothing was measured."""
        now = time.monotonic() if now is None else now
        with self._lock:
            latency = np.array(self._latency, dtype=np.float64) * 1e3
            stages = {name: float(np.median(times)) * 1e3 for name, times in self._stages.items() if times}
            received, lost = self._received.rate(now), self._lost.rate(now)
            out: dict[str, Any] = {"input_rate_hz": received, "processed_rate_hz": self._processed.rate(now),
                                   "input_lost_share": lost / (lost + received) if lost else 0.0, **self.counts}
        out["latency_p50_ms"] = float(np.percentile(latency, 50)) if latency.size else float("nan")
        out["latency_p95_ms"] = float(np.percentile(latency, 95)) if latency.size else float("nan")
        out.update({f"{name}_p50_ms": value for name, value in stages.items()})
        return out
