"""Benchmarks behind ``rvm bench <suite>``: one module per suite in this package.

A suite module defines ``add_args(parser)`` and ``run(args) -> int`` (exit status) and keeps its
heavy imports (torch, onnxruntime) inside functions, since every suite module is imported to
build the ``rvm bench`` parser. Register a new suite with one line in :data:`SUITES`.
"""

from __future__ import annotations

import argparse
import importlib

# suite name -> (help, module in rvm_core.bench)
SUITES: dict[str, tuple[str, str]] = {
    "train": ("training samples/s and data-wait fraction", "train"),
    "runtime": ("PyTorch eager vs ONNX Runtime step time, GFLOP/s vs GEMM peak", "runtime"),
    "gemm": ("fp32 GEMM peak GFLOP/s of this machine (torch, numpy)", "gemm"),
    "tracker": ("tracker + label propagation fps, alone and with the model", "tracker"),
    "node": ("rvm_node end to end vs bare runtime step and rclpy relay; fps", "node"),
    "transport": ("raw frames from another process: published / received / processed", "transport"),
    "streaming": ("per-frame step time and memory over a 1000-frame stream", "streaming"),
    "peers": ("ms per new frame vs VideoMAE / V-JEPA 2 (windowed) and DINOv2", "peers"),
    "aggregator": ("recurrent core vs self-attention over the last K frames", "aggregator"),
    "mfu": ("achieved GFLOP/s of the step vs the GEMM peak of the same run", "mfu"),
    "all": ("every suite above -> docs/performance.md + PNG plots", "all"),
}


def bench_args(p: argparse.ArgumentParser) -> None:
    """Declare one ``rvm bench`` subcommand per registered suite."""
    sub = p.add_subparsers(dest="bench", required=True, metavar="suite")
    for name, (help_text, module) in SUITES.items():
        suite = importlib.import_module(f".{module}", __name__)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        suite.add_args(sp)
        sp.set_defaults(bench_run=suite.run)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the selected suite."""
    return args.bench_run(args)
