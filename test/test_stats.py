"""CameraStats counters and latency percentiles (plain Python, no ROS)."""

from __future__ import annotations

import math

import numpy as np

from rvm_ros.stats import CameraStats, percentiles


def test_percentiles_and_empty() -> None:
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0], (0, 50, 100)) == (1.0, 3.0, 5.0)
    assert all(math.isnan(v) for v in percentiles([], (50, 95)))


def test_latency_percentiles_match_snapshot() -> None:
    stats = CameraStats(window_sec=5.0)
    assert all(math.isnan(v) for v in stats.latency_percentiles())
    lat = np.linspace(0.01, 0.1, 10)
    for i, s in enumerate(lat):
        stats.processed(float(s), 0.005, now=100.0 + 0.1 * i)
    p50, p95 = stats.latency_percentiles((50, 95))
    np.testing.assert_allclose((p50, p95), np.percentile(lat * 1e3, [50, 95]))
    snap = stats.snapshot(now=101.0)
    np.testing.assert_allclose((snap.latency_p50_ms, snap.latency_p95_ms), (p50, p95))
    assert snap.frames_processed == 10
