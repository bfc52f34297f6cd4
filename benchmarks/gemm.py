"""``python -m benchmarks gemm``: the fp32 GEMM peak of this machine (torch and numpy), in GFLOP/s.

The runtime benchmark measures it in the same process as the model timings, so utilisation is
against what the cores deliver right now (other load included), not a datasheet number.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable


def _best_rate(fn: Callable[[], object], flops: float, repeats: int, seconds: float) -> float:
    """Best GFLOP/s of ``fn`` over ``repeats`` timed calls (at least ``seconds`` of work)."""
    fn()  # warm-up: thread pool start, page faults
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < repeats or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return flops / best / 1e9


def gemm_peak(
    sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5, seconds: float = 0.5, threads: int = 2
) -> dict[str, float]:
    """Best fp32 square-matmul GFLOP/s via torch and numpy over ``sizes``; ``peak`` = the max.

    Sets torch's and numpy's (OpenBLAS) thread counts to ``threads`` for the whole process.
    numpy is left out when its BLAS is not OpenBLAS (its pool size cannot be set here).
    """
    import numpy as np
    import torch

    from rvm_ros.blas_threads import limit_blas_threads

    torch.set_num_threads(threads)
    # numpy's BLAS keeps its own pool (all cores by default); the peak must use `threads` too.
    with_numpy = limit_blas_threads(threads)
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty(n, n)
        c = np.empty((n, n), np.float32)
        flops = 2.0 * n**3
        torch_mm = functools.partial(torch.mm, ta, tb, out=tc)
        numpy_mm = functools.partial(np.matmul, a, b, out=c)
        out[f"torch_{n}"] = _best_rate(torch_mm, flops, repeats, seconds)
        if with_numpy:
            out[f"numpy_{n}"] = _best_rate(numpy_mm, flops, repeats, seconds)
    out["peak"] = max(out.values())
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1024,2048", help="square matrix sizes, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="torch threads = numpy BLAS threads")


def run(args: argparse.Namespace) -> int:
    sizes = tuple(int(s) for s in args.sizes.split(","))
    for key, value in gemm_peak(sizes, threads=args.threads).items():
        print(f"{key:>12}: {value:8.1f} GFLOP/s")
    return 0
