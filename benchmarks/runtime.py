"""``python -m benchmarks runtime``: PyTorch eager vs ONNX Runtime (CPU EP) time per streaming step.

Both sides do the same work per frame: uint8 camera frame -> resize/scale -> encoder + core,
state carried over. PyTorch runs ``to_model_input`` + ``RVM.step`` under inference_mode; ORT
runs the exported graph through :class:`rvm_ros.runtime.RVMRuntime` (IOBinding, ping-pong
state, features copied out), i.e. the deployed path. Both get the same thread count.

The machine is shared, so timings are interleaved: rounds of (eager block, ORT block, ...) with
the first step of each block discarded (it pays for the other side's threads going idle). Step
times are medians over all rounds; the ratio is paired: per round, eager block median / ORT
block median (blocks a second apart see the same load), and the median of those per-round
ratios is reported with their range, so load that comes and goes between rounds cancels
instead of landing on one side. ``best`` is the ratio of the two fastest steps (``timeit``'s
convention: slower repeats are interference, not the code). ``wait`` is the share of the
timed rounds' runnable time this process's threads spent waiting for a core (Linux schedstat;
``-`` elsewhere): above 10% other load was taking the cores and the run is flagged. Achieved
GFLOP/s uses the analytic count of :mod:`rvm_core.flops`; the GEMM peak is measured in the
same run (:mod:`benchmarks.gemm`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import build_rvm, median_ms, paired_ratios, sched_times, timed_rounds, wait_share

# Above this share of its runnable time spent waiting for a core, the run competed for cores.
WAIT_SHARE_WARN = 0.1


def bench_model(
    model: Any,
    label: str,
    frames: int,
    rounds: int,
    threads: int,
    attention: tuple[str, ...],
    workdir: Path,
) -> list[dict[str, Any]]:
    """Time eager vs ORT for one model at its config image size; one row per attention mode."""
    import numpy as np
    import torch

    from rvm_core.export import export_onnx
    from rvm_core.flops import step_flops
    from rvm_core.preprocess import to_model_input
    from rvm_ros.runtime import RVMRuntime

    torch.set_num_threads(threads)
    size = tuple(model.config.image_size)
    flops = step_flops(model.config)["total"]
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (8, *size, 3), dtype=np.uint8)
    tvideo = torch.from_numpy(video)
    runtimes = {}
    for mode in attention:
        path = workdir / f"{label}-{mode}.onnx"
        export_onnx(model, path, size, attention=mode)
        runtimes[mode] = RVMRuntime(path, device="cpu", threads=threads)

    eager_state: list[torch.Tensor | None] = [None]
    counter = [0]

    def eager() -> None:
        i = counter[0] = (counter[0] + 1) % len(video)
        with torch.inference_mode():
            x = to_model_input(tvideo[i : i + 1], size)
            _, eager_state[0] = model.step(x, eager_state[0])

    def ort_step(rt: RVMRuntime) -> Callable[[], object]:
        def fn() -> None:
            counter[0] = (counter[0] + 1) % len(video)
            rt.step(video[counter[0]])

        return fn

    fns: dict[str, Callable[[], object]] = {"eager": eager}
    fns.update({mode: ort_step(rt) for mode, rt in runtimes.items()})
    before = sched_times()
    times = timed_rounds(fns, rounds, frames)
    waited = wait_share(before, sched_times())
    eager_ms = median_ms(times["eager"])
    rows = []
    for mode in attention:
        ort_ms = median_ms(times[mode])
        ratios = paired_ratios(times["eager"], times[mode], rounds)
        rows.append(
            {
                "model": label,
                "input": f"{size[0]}x{size[1]}",
                "attention": mode,
                "gflop": flops / 1e9,
                "eager_ms": eager_ms,
                "ort_ms": ort_ms,
                "speedup": statistics.median(ratios),
                "speedup_range": (min(ratios), max(ratios)),
                "speedup_best": min(times["eager"]) / min(times[mode]),
                "eager_gflops": flops / eager_ms / 1e6,
                "ort_gflops": flops / ort_ms / 1e6,
                "samples": len(times[mode]),
                "wait_share": waited,
            }
        )
    return rows


def bench_runtime(
    sizes: list[str],
    checkpoints: list[str] = (),
    frames: int = 20,
    rounds: int = 5,
    threads: int = 2,
    attention: tuple[str, ...] = ("onnx", "ort"),
    quick: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Benchmark rows (one per model x attention mode) and the GEMM peak of the same run."""
    from rvm_core.checkpoint import load_model

    from .gemm import gemm_peak

    models = [(Path(c).stem, load_model(c)) for c in checkpoints]
    for name in sizes:
        if quick:
            models.append((f"{name}-quick", build_rvm(name, quick=True, image_size=(64, 64))))
        else:
            models.append((name, build_rvm(name)))
    gemm_kw: dict[str, Any] = {"sizes": (256,), "seconds": 0.05} if quick else {}
    peak = gemm_peak(threads=threads, **gemm_kw)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rvm-bench-runtime-") as tmp:
        for label, model in models:
            rows += bench_model(model.eval(), label, frames, rounds, threads, attention, Path(tmp))
    # Measured again at the end; the better one is the peak (load on a shared machine varies).
    peak_end = gemm_peak(threads=threads, **gemm_kw)
    peak = {k: max(v, peak_end[k]) for k, v in peak.items()}
    for row in rows:
        row["peak_gflops"] = peak["peak"]
        row["utilisation"] = row["ort_gflops"] / peak["peak"]
    return rows, peak


def format_share(x: float) -> str:
    """A share as ``12%``, or ``-`` when unknown (NaN)."""
    return "-" if math.isnan(x) else f"{x:.0%}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark rows as a fixed-width text table."""
    head = (
        f"{'model':<12} {'input':>9} {'attn':>5} {'GFLOP':>6} {'eager ms':>9} {'ORT ms':>8} "
        f"{'ratio':>6} {'range':>11} {'best':>5} {'ORT GFLOP/s':>11} {'GEMM peak':>9} "
        f"{'util':>5} {'wait':>4}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<12} {r['input']:>9} {r['attention']:>5} {r['gflop']:>6.2f} "
            f"{r['eager_ms']:>9.2f} {r['ort_ms']:>8.2f} {r['speedup']:>5.2f}x "
            f"{r['speedup_range'][0]:>5.2f}-{r['speedup_range'][1]:.2f}x "
            f"{r['speedup_best']:>4.2f}x "
            f"{r['ort_gflops']:>11.1f} {r['peak_gflops']:>9.1f} {r['utilisation']:>5.0%} "
            f"{format_share(r['wait_share']):>4}"
        )
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint(s) to include")
    p.add_argument(
        "--sizes", default="default,S", help="models (random weights): default (shipped arch), S.."
    )
    p.add_argument("--frames", type=int, default=20, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (eager, ORT, ...)")
    p.add_argument("--threads", type=int, default=2, help="torch threads = ORT intra-op threads")
    p.add_argument(
        "--attention",
        default="onnx,ort",
        help="exports to time: onnx (plain MatMul/Softmax), ort (MultiHeadAttention contrib op)",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args: argparse.Namespace) -> int:
    sizes = [s for s in args.sizes.split(",") if s]
    attention = tuple(a for a in args.attention.split(",") if a)
    frames, rounds = (3, 2) if args.quick else (args.frames, args.rounds)
    rows, peak = bench_runtime(
        sizes, args.checkpoint, frames, rounds, args.threads, attention, args.quick
    )
    gemm = ", ".join(f"{k} {v:.0f}" for k, v in peak.items() if k != "peak")
    print(
        f"threads: {args.threads}; median ms/step over {rounds} interleaved rounds x {frames}; "
        "ratio = median (range) of per-round eager/ORT"
    )
    print(f"GEMM fp32 GFLOP/s: {gemm}")
    print(format_table(rows))
    waited = max((r["wait_share"] for r in rows if not math.isnan(r["wait_share"])), default=0)
    if waited > WAIT_SHARE_WARN:
        print(
            f"warning: the timed rounds spent {waited:.0%} of their runnable time waiting for a "
            "core (other load; at > 1 thread also this process's own spinning threads): "
            "timings and ratios are unreliable"
        )
    return 0
