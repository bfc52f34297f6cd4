"""Benchmarks of rvm, outside the libraries: ``python -m benchmarks <suite>`` from a checkout.

A suite module defines ``add_args(parser)`` and ``run(args) -> int`` (exit status) and keeps its
heavy imports (torch, onnxruntime, rclpy) inside functions, since every suite module is imported
to build the parser. Register a new suite with one line in :data:`SUITES`. Suites that write
files write under ``--out``; nothing here writes into the packages or ``docs/`` unless told to.
"""

from __future__ import annotations

# suite name -> (help, module in this folder)
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
    "all": ("every suite above but train/gemm/transport -> OUT/performance.md + plots", "all"),
    "gpu-check": (
        "GPU checks (parity, training, CUDA graphs, ORT/TensorRT): one table",
        "gpu_check",
    ),
}
