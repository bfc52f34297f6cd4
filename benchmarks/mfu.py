"""``python -m benchmarks mfu``: achieved GFLOP/s of the RVM step vs this CPU's GEMM peak (same
run).

Model FLOPs utilisation = analytic step FLOPs (:func:`rvm_core.flops.step_flops`) / median step
time / fp32 GEMM peak. The peak is measured in this process before and after the model timings
(the better of the two counts: load on a shared machine only lowers it), so the ratio compares
like with like. Step times come from :func:`benchmarks.runtime.bench_model`: PyTorch eager
and ONNX Runtime interleaved, uint8 frame in, state carried over.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from .common import build_rvm, md_table, pyplot, save_figure


def measure(
    models: list[str],
    threads: int = 2,
    frames: int = 20,
    rounds: int = 3,
    quick: bool = False,
) -> dict[str, Any]:
    """Rows (one per model) with eager/ORT GFLOP/s and utilisation, plus the GEMM peak."""
    from rvm_core.export import DEFAULT_ATTENTION
    from rvm_core.flops import step_flops

    from .gemm import gemm_peak
    from .runtime import bench_model

    gemm_kw: dict[str, Any] = {"sizes": (256,), "seconds": 0.05} if quick else {}
    before = gemm_peak(threads=threads, **gemm_kw)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rvm-bench-mfu-") as tmp:
        for name in models:
            model = build_rvm(name, quick)
            (row,) = bench_model(
                model, name, frames, rounds, threads, (DEFAULT_ATTENTION,), Path(tmp)
            )
            parts = step_flops(model.config)
            row["encoder_share"] = (parts["patch_embed"] + parts["encoder"]) / parts["total"]
            rows.append(row)
    after = gemm_peak(threads=threads, **gemm_kw)
    peak = {k: max(v, after[k]) for k, v in before.items()}
    for row in rows:
        row["peak_gflops"] = peak["peak"]
        row["eager_mfu"] = row["eager_gflops"] / peak["peak"]
        row["ort_mfu"] = row["ort_gflops"] / peak["peak"]
    return {"rows": rows, "peak": peak, "peak_before": before["peak"], "peak_after": after["peak"]}


def markdown(result: dict[str, Any]) -> str:
    """GEMM peak line and the utilisation table."""
    peak = result["peak"]
    gemm = ", ".join(f"{k} {v:.0f}" for k, v in peak.items() if k != "peak")
    head = [
        "model",
        "input",
        "GFLOP / step",
        "encoder share",
        "eager ms",
        "eager GFLOP/s",
        "eager MFU",
        "ORT ms",
        "ORT GFLOP/s",
        "ORT MFU",
    ]
    table = [
        [
            r["model"],
            r["input"],
            r["gflop"],
            f"{r['encoder_share']:.0%}",
            r["eager_ms"],
            r["eager_gflops"],
            f"{r['eager_mfu']:.0%}",
            r["ort_ms"],
            r["ort_gflops"],
            f"{r['ort_mfu']:.0%}",
        ]
        for r in result["rows"]
    ]
    return (
        f"fp32 GEMM peak (same run, best of before/after: {result['peak_before']:.0f} / "
        f"{result['peak_after']:.0f}): **{peak['peak']:.0f} GFLOP/s** ({gemm}).\n\n"
        + md_table(head, table)
    )


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """Achieved GFLOP/s per model and backend against the GEMM peak line."""
    import numpy as np

    plt = pyplot()
    rows = result["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [r["eager_gflops"] for r in rows], 0.4, label="PyTorch eager")
    ax.bar(x + 0.2, [r["ort_gflops"] for r in rows], 0.4, label="ONNX Runtime")
    ax.axhline(result["peak"]["peak"], ls="--", color="gray", label="fp32 GEMM peak (same run)")
    ax.set_xticks(x, [f"{r['model']}\n{r['input']}" for r in rows])
    ax.set_ylabel("GFLOP/s")
    ax.set_title("RVM step: achieved GFLOP/s vs GEMM peak")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return [save_figure(fig, out / "mfu.png")]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", default="default,S", help="bench model names (default = tiny 96x128)"
    )
    p.add_argument("--frames", type=int, default=20, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (eager, ORT)")
    p.add_argument("--threads", type=int, default=2, help="torch threads = ORT intra-op threads")
    p.add_argument("--out", default=None, help="directory for the PNG plot (none: no plot)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args: argparse.Namespace) -> int:
    models = [m for m in args.models.split(",") if m]
    frames, rounds = (3, 1) if args.quick else (args.frames, args.rounds)
    result = measure(models[:1] if args.quick else models, args.threads, frames, rounds, args.quick)
    print(markdown(result))
    if args.out:
        for path in plot(result, Path(args.out)):
            print(f"wrote {path}")
    return 0
