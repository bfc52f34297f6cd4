"""Throughput of the data pipeline alone (no model), in samples per second."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def measure_loader(
    loader: Iterable[dict[str, Any]], num_batches: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Time `num_batches` batches after `warmup` ones; returns samples/s, batches/s, ms/batch.

    Warmup absorbs worker start-up and the first memmap page faults, which a long run amortizes.
    """
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    samples = 0
    t0 = time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
        samples += int(batch["source"].shape[0])
    dt = time.perf_counter() - t0
    return {
        "samples_per_s": samples / dt,
        "batches_per_s": num_batches / dt,
        "ms_per_batch": 1000.0 * dt / num_batches,
        "num_batches": float(num_batches),
        "seconds": dt,
    }
