"""``python -m benchmarks aggregator``: the recurrent core vs the self-attention aggregator (paper
ablation).

The Transformer-GRU core carries one encoded frame of state, so its cost per frame is fixed.
The ablation (:class:`rvm_core.model.core.AttentionAggregator`, ``aggregator="attention"``)
lets the current frame attend to the last K encoded frames: its keys/values grow with K. Both
are timed per frame, core alone (on pre-encoded frames) and as a full ``RVM.step``, with the
history full (K-1 steps run first), interleaved, same threads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import build_rvm, md_table, median_ms, pyplot, save_figure, timed_rounds

WINDOWS = (1, 2, 4, 8, 16)


def measure_model(
    name: str,
    windows: tuple[int, ...],
    threads: int,
    rounds: int,
    frames: int,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """Rows for the GRU core and the attention aggregator at each K, for one model size."""
    import torch

    from rvm_core.flops import step_flops

    torch.set_num_threads(threads)
    variants: dict[str, Any] = {"GRU core": build_rvm(name, quick)}
    for k in windows:
        variants[f"attention K={k}"] = build_rvm(
            name, quick, aggregator="attention", attention_window=k
        )
    h, w = variants["GRU core"].config.image_size
    video = torch.rand(8, 1, 3, h, w, generator=torch.Generator().manual_seed(0))
    core_fns: dict[str, Any] = {}
    step_fns: dict[str, Any] = {}
    with torch.inference_mode():
        encoded = variants["GRU core"].encode_frames(video.flatten(0, 1)).unsqueeze(1)
        for label, model in variants.items():
            # Fill the history so every step attends to K real frames (steady state).
            state = None
            for i in range(model.config.attention_window):
                _, state = model.step(video[i % len(video)], state)
            core_state = [state, 0]
            step_state = [state.clone(), 0]

            def core(model: Any = model, s: list = core_state) -> None:
                s[1] = (s[1] + 1) % len(encoded)
                _, s[0] = model.core(encoded[s[1]], s[0])

            def step(model: Any = model, s: list = step_state) -> None:
                s[1] = (s[1] + 1) % len(video)
                _, s[0] = model.step(video[s[1]], s[0])

            core_fns[label], step_fns[label] = core, step
        core_times = timed_rounds(core_fns, rounds, frames, block_seconds=0.5)
        step_times = timed_rounds(step_fns, rounds, frames, block_seconds=0.5)
    base_core = median_ms(core_times["GRU core"])
    base_step = median_ms(step_times["GRU core"])
    rows = []
    for label, model in variants.items():
        cfg = model.config
        fl = step_flops(cfg)
        core_ms, step_ms = median_ms(core_times[label]), median_ms(step_times[label])
        rows.append(
            {
                "model": name,
                "input": f"{h}x{w}",
                "aggregator": label,
                "window": None if cfg.aggregator == "gru" else cfg.attention_window,
                "core_params_m": sum(p.numel() for p in model.core.parameters()) / 1e6,
                "core_gflop": fl["core"] / 1e9,
                "step_gflop": fl["total"] / 1e9,
                "core_ms": core_ms,
                "step_ms": step_ms,
                "core_vs_gru": core_ms / base_core,
                "step_vs_gru": step_ms / base_step,
            }
        )
    return rows


def measure(
    models: list[str],
    windows: tuple[int, ...] = WINDOWS,
    threads: int = 2,
    rounds: int = 3,
    frames: int = 10,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """All rows for ``models`` (bench names: ``default``, ``S``...)."""
    rows: list[dict[str, Any]] = []
    for name in models:
        rows += measure_model(name, windows, threads, rounds, frames, quick)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table: per-frame core and step cost of each aggregator, ratio to the GRU core."""
    head = [
        "model",
        "input",
        "aggregator",
        "core params (M)",
        "core GFLOP",
        "core ms",
        "core x GRU",
        "step GFLOP",
        "step ms",
        "step x GRU",
    ]
    table = [
        [
            r["model"],
            r["input"],
            r["aggregator"],
            r["core_params_m"],
            r["core_gflop"],
            r["core_ms"],
            f"{r['core_vs_gru']:.2f}x",
            r["step_gflop"],
            r["step_ms"],
            f"{r['step_vs_gru']:.2f}x",
        ]
        for r in rows
    ]
    return md_table(head, table)


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per-frame ms vs K (attention) with the GRU core as a flat line; core and full step."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        sel = [r for r in rows if r["model"] == name]
        gru = next(r for r in sel if r["window"] is None)
        att = [r for r in sel if r["window"] is not None]
        ks = [r["window"] for r in att]
        for key, color, what in (("core_ms", "tab:red", "core"), ("step_ms", "tab:blue", "step")):
            ax.plot(ks, [r[key] for r in att], "o-", color=color, label=f"attention over K: {what}")
            ax.axhline(gru[key], ls="--", color=color, label=f"recurrent (GRU) {what}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, None)
        ax.set(xlabel="K (frames attended)", ylabel="ms per frame (median)")
        ax.set_title(f"RVM {name} ({gru['input']}): aggregator cost per frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return [save_figure(fig, out / "aggregator.png")]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", default="default,S", help="bench model names (default = tiny 96x128)"
    )
    p.add_argument("--windows", default="1,2,4,8,16", help="K values of the attention aggregator")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--frames", type=int, default=10, help="max timed frames per variant per round")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, help="directory for the PNG plot (none: no plot)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args: argparse.Namespace) -> int:
    models = [m for m in args.models.split(",") if m]
    windows = tuple(int(k) for k in args.windows.split(",") if k)
    if args.quick:
        models, windows = models[:1], windows[:3]
    rounds, frames = (1, 2) if args.quick else (args.rounds, args.frames)
    rows = measure(models, windows, args.threads, rounds, frames, args.quick)
    print(markdown(rows))
    if args.out:
        for path in plot(rows, Path(args.out)):
            print(f"wrote {path}")
    return 0
