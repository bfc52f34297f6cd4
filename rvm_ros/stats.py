"""Per-camera counters and a sliding window of latencies (plain Python, thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95)) -> tuple[float, ...]:
    """The ``qs`` percentiles of ``values`` (NaN each when there are none)."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return tuple(float("nan") for _ in qs)
    return tuple(float(v) for v in np.percentile(a, qs))


@dataclass
class StatsSnapshot:
    """Counters since start plus window statistics; latencies in ms, fps in frames/s."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_rejected: int = 0
    resets: int = 0
    latency_p50_ms: float = float("nan")
    latency_p95_ms: float = float("nan")
    step_p50_ms: float = float("nan")
    fps: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    since_received_s: float = float("inf")  # since the newest frame arrived (inf: none yet)
    since_processed_s: float = float("inf")  # since the newest frame was processed

    def line(self) -> str:
        """One log line, e.g. ``in 120 processed 80 dropped 40 rejected 0 | 15.1 fps ...``."""
        rej = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_reason.items()))
        return (
            f"in {self.frames_in} processed {self.frames_processed} dropped {self.frames_dropped} "
            f"rejected {self.frames_rejected}{f' ({rej})' if rej else ''} resets {self.resets} | "
            f"{self.fps:.1f} fps, latency p50 {self.latency_p50_ms:.1f} ms "
            f"p95 {self.latency_p95_ms:.1f} ms, step p50 {self.step_p50_ms:.1f} ms"
        )


class CameraStats:
    """Counts frames and keeps (time, latency, step) of processed frames over ``window_sec``."""

    def __init__(self, window_sec: float = 5.0, max_samples: int = 4096) -> None:
        self.window_sec = window_sec
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.resets = 0
        self.rejected: Counter[str] = Counter()
        self._t_received: float | None = None  # monotonic time of the newest arrival
        self._t_processed: float | None = None
        # Bounded: memory stays constant whatever the frame rate.
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=max_samples)

    def received(self) -> None:
        with self._lock:
            self.frames_in += 1
            self._t_received = time.monotonic()

    def dropped(self) -> None:
        with self._lock:
            self.frames_dropped += 1

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def reset(self) -> None:
        with self._lock:
            self.resets += 1

    def processed(self, latency_s: float, step_s: float, now: float | None = None) -> None:
        """Record one processed frame: stamp-to-publication latency and model step time (s)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_processed += 1
            self._t_processed = now
            self._samples.append((now, latency_s, step_s))

    def latency_percentiles(
        self, qs: Sequence[float] = (50, 95), window_sec: float | None = None
    ) -> tuple[float, ...]:
        """Latency percentiles (ms) of the processed frames kept (``max_samples`` newest), or of
        those of the last ``window_sec``; NaN when there are none."""
        now = time.monotonic()
        with self._lock:
            lat = [
                s[1] * 1e3 for s in self._samples if window_sec is None or s[0] >= now - window_sec
            ]
        return percentiles(lat, qs)

    def snapshot(self, now: float | None = None) -> StatsSnapshot:
        """Counters plus p50/p95 latency and fps over the last ``window_sec``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [s for s in self._samples if s[0] >= now - self.window_sec]
            snap = StatsSnapshot(
                frames_in=self.frames_in,
                frames_processed=self.frames_processed,
                frames_dropped=self.frames_dropped,
                frames_rejected=sum(self.rejected.values()),
                resets=self.resets,
                rejected_by_reason=dict(self.rejected),
            )
            if self._t_received is not None:
                snap.since_received_s = max(0.0, now - self._t_received)
            if self._t_processed is not None:
                snap.since_processed_s = max(0.0, now - self._t_processed)
        if recent:
            snap.latency_p50_ms, snap.latency_p95_ms = percentiles(s[1] * 1e3 for s in recent)
            snap.step_p50_ms = float(np.median([s[2] for s in recent]) * 1e3)
            # Frame intervals over the window (robust to a stream younger than the window).
            if len(recent) > 1:
                snap.fps = (len(recent) - 1) / max(recent[-1][0] - recent[0][0], 1e-6)
        return snap
