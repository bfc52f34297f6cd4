"""``python -m benchmarks train``: training throughput, step time and data-wait fraction of a real
run.

It runs the actual training loop (``rvm_core.train.loop.train``, no checkpoints) for
``warmup + steps`` optimizer steps in a temporary directory and reports the last ``steps``; the
model FLOPs per sample (forward + backward, counted once with ``FlopCounterMode``) give the
achieved FLOP rate, and the model FLOP utilisation when ``--peak-tflops`` is given.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any


def add_args(t: argparse.ArgumentParser) -> None:
    """Arguments of the suite (registered in ``benchmarks.SUITES``)."""
    t.add_argument("--config", required=True, help="training YAML")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.add_argument("--steps", type=int, default=30, help="measured optimizer steps")
    t.add_argument("--warmup", type=int, default=5, help="unmeasured first steps")
    t.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, for MFU")


def run(args: argparse.Namespace) -> int:
    return cmd_bench_train(args)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from rvm_core.train.config import load_config

    cfg = load_config(args.config, args.overrides)
    result = bench_train(cfg, args.steps, args.warmup, args.peak_tflops)
    if int(os.environ.get("RANK", 0)) == 0:
        for key, value in result.items():
            print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    return 0


def model_flops_per_sample(cfg: Any) -> float:
    """Forward + backward FLOPs of one training sample (matmuls and convs, FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rvm_core.checkpoint import build_model
    from rvm_core.train.loop import sample_masks

    mc = cfg.model_config()
    model = build_model(mc, seed=0)
    b, (h, w) = 2, mc.image_size
    src = torch.rand(b, mc.num_source, 3, h, w)
    tgt = torch.rand(b, cfg.data.num_target, 3, h, w)
    deltas = torch.full((b, cfg.data.num_target), mc.num_source + cfg.data.gap_min - 1)
    mask = sample_masks(0, 0, 0, 0, b, cfg.data.num_target, mc.grid[0] * mc.grid[1], mc.mask_ratio)
    with FlopCounterMode(display=False) as counter:
        model(src, tgt, deltas, mask).square().mean().backward()
    return counter.get_total_flops() / b


def bench_train(cfg: Any, steps: int = 30, warmup: int = 5, peak_tflops: float = 0.0) -> dict:
    """Run ``warmup + steps`` training steps; throughput and data wait of the last ``steps``."""
    from rvm_core.train.loop import train
    from rvm_core.train.report import read_metrics

    flops = model_flops_per_sample(cfg)
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        cfg.run.out_dir, cfg.run.name = tmp, "bench"
        cfg.run.steps = warmup + steps
        cfg.run.preview_every, cfg.run.progress = 0, False
        cfg.run.log_every = cfg.run.steps
        summary = train(cfg, save=False)
        if int(os.environ.get("RANK", 0)) != 0:
            return {}  # only rank 0 writes the per-step metrics
        recs = read_metrics(summary["run_dir"])[warmup:]
    step_s = sum(r["step_s"] for r in recs)
    wait_s = sum(r["data_wait_s"] for r in recs)
    sps = len(recs) * cfg.optim.batch_size / step_s
    out = {
        "model": cfg.model_config().name,
        "image_size": "x".join(map(str, cfg.model_config().image_size)),
        "world_size": summary["world_size"],
        "global_batch": cfg.optim.batch_size,
        "measured_steps": len(recs),
        "samples_per_s": sps,
        "mean_step_s": step_s / len(recs),
        "data_wait_frac": wait_s / step_s,
        "gflop_per_sample": flops / 1e9,
        "achieved_tflops": flops * sps / 1e12,
        "final_loss": recs[-1]["loss"],
    }
    if peak_tflops > 0:
        out["mfu"] = flops * sps / 1e12 / (peak_tflops * summary["world_size"])
    return out
