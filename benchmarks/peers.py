"""``python -m benchmarks peers``: cost per new frame of RVM vs clip and image models at equal
width/depth.

Peers are Hugging Face ``transformers`` models built from configs (random weights, nothing is
downloaded): VideoMAE and V-JEPA 2 (encoder only), used the only way a streaming user can -
every new frame re-encodes the last 16 frames (tubelet 2, so 8 x 256 tokens per new frame) -
and DINOv2 run per frame. RVM runs ``RVM.step`` with its state carried over.

Sizes ("equal width/depth"): ``S`` = width 384, 12 layers, 6 heads, MLP 1536 for the peers and
RVM-S (same encoder plus its 4-layer core); ``default`` = the shipped model's encoder width,
depth, heads and MLP (read from its checkpoint) for the peers, and the shipped architecture
(encoder + core) with a linear 16-pixel patch embedding for RVM, so every model sees the same
tokens. All at 256x256, patch 16. RVM as deployed (the shipped model at its native input, its
conv stem included) is reported too, as ``RVM native``.
Everything is timed on float frames already in model layout (decoding and resizing are the same
for all), in eval mode under ``torch.inference_mode`` with the same thread count, interleaved.
Ratios to RVM are paired: the median over rounds of (model's block median / RVM's block median
in the same round), so load that comes and goes between rounds cancels.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from .common import (
    build_rvm,
    md_table,
    median_ms,
    paired_ratios,
    pyplot,
    save_figure,
    timed_rounds,
)

WINDOW, TUBELET, PATCH, IMAGE = 16, 2, 16, 256
S_SIZE = dict(width=384, layers=12, heads=6, mlp=1536)
QUICK = dict(width=32, layers=1, heads=2, mlp=64)
QUICK_IMAGE, QUICK_WINDOW = 64, 4
WINDOWED_MIN_RATIO = 6.0  # clip model / RVM per new frame: at least this
IMAGE_MAX_RATIO = 1.6  # RVM / per-frame image model: at most this


def vit_flops(tokens: int, patch_in: int, width: int, layers: int, mlp: int, cls: bool) -> int:
    """FLOPs of one ViT forward (same counting as :mod:`rvm_core.flops`)."""
    from rvm_core.flops import _attention, _mlp

    t = tokens + int(cls)
    patch = 2 * tokens * patch_in * width
    return patch + layers * (_attention(t, t, width) + _mlp(t, width, mlp))


def peer_size(name: str) -> dict[str, int]:
    """Width/depth/heads/MLP of the peers for ``S`` or ``default`` (the shipped model's encoder)."""
    if name == "S":
        return dict(S_SIZE)
    if name != "default":
        raise ValueError(f"unknown peer size {name!r} (S, default)")
    from rvm_core.checkpoint import DEFAULT_CHECKPOINT, read_config

    c = read_config(DEFAULT_CHECKPOINT)
    return dict(width=c.width, layers=c.enc_layers, heads=c.enc_heads, mlp=c.enc_mlp)


def build_peers(size: dict[str, int], image: int, window: int) -> dict[str, Any]:
    """The peer models (eval, random weights) at one size: name -> module."""
    import torch
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        VideoMAEConfig,
        VideoMAEModel,
        VJEPA2Config,
        VJEPA2Model,
    )

    d, layers, heads, mlp = size["width"], size["layers"], size["heads"], size["mlp"]
    common = dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads)
    torch.manual_seed(0)
    videomae = VideoMAEModel(
        VideoMAEConfig(
            **common,
            intermediate_size=mlp,
            image_size=image,
            patch_size=PATCH,
            tubelet_size=TUBELET,
            num_frames=window,
            use_mean_pooling=False,
        )
    )
    vjepa = VJEPA2Model(
        VJEPA2Config(
            **common,
            mlp_ratio=mlp // d,
            crop_size=image,
            patch_size=PATCH,
            tubelet_size=TUBELET,
            frames_per_clip=window,
            # The predictor is never run (encoder features only); keep its weights small.
            pred_num_hidden_layers=1,
            pred_hidden_size=64,
            pred_num_attention_heads=2,
        )
    )
    dinov2 = Dinov2Model(
        Dinov2Config(**common, mlp_ratio=mlp // d, image_size=image, patch_size=PATCH)
    )
    return {
        "VideoMAE": videomae.eval(),
        "V-JEPA 2": vjepa.encoder.eval(),
        "DINOv2": dinov2.eval(),
    }


def measure_size(
    name: str, threads: int, rounds: int, frames: int, quick: bool = False
) -> list[dict[str, Any]]:
    """Rows (one per model) of ms per new frame at one size, RVM and peers interleaved."""
    import torch

    from rvm_core.flops import step_flops

    torch.set_num_threads(threads)
    size = QUICK if quick else peer_size(name)
    image, window = (QUICK_IMAGE, QUICK_WINDOW) if quick else (IMAGE, WINDOW)
    d, layers, mlp = size["width"], size["layers"], size["mlp"]
    n = (image // PATCH) ** 2
    rvms: dict[str, Any] = {}
    if name == "S" and not quick:
        rvms["RVM"] = build_rvm("S")
    else:
        kw = dict(patch_size=PATCH, image_size=(image, image), stem="patch", fine_features=False)
        if quick:  # the quick RVM shares the peers' quick width and depth
            kw.update(width=d, enc_layers=layers, enc_heads=size["heads"], enc_mlp=mlp)
        rvms["RVM"] = build_rvm("default", quick, **kw)
        if name == "default":
            rvms["RVM native"] = build_rvm("default", quick)
    peers = build_peers(size, image, window)

    gen = torch.Generator().manual_seed(0)
    fns: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for label, model in rvms.items():
        h, w = model.config.image_size
        stream = torch.rand(8, 1, 3, h, w, generator=gen)
        state: list[Any] = [None, 0]

        def rvm_step(
            model: Any = model, stream: torch.Tensor = stream, state: list = state
        ) -> None:
            state[1] = (state[1] + 1) % len(stream)
            _, state[0] = model.step(stream[state[1]], state[0])

        fns[label] = rvm_step
        cfg = model.config
        info[label] = {
            "kind": "recurrent, 1 frame/step",
            "input": f"{h}x{w}, patch {cfg.patch_size}",
            "tokens": 1 + cfg.grid[0] * cfg.grid[1],
            "flops": step_flops(cfg)["total"],
        }
    frames_in = torch.rand(8, 1, 3, image, image, generator=gen)
    clip = torch.rand(1, window, 3, image, image, generator=gen)
    counter = [0]

    def next_frame() -> torch.Tensor:
        counter[0] = (counter[0] + 1) % len(frames_in)
        return frames_in[counter[0]]

    def windowed(model: Any, key: str) -> Any:
        def fn() -> None:
            # Slide the window by the new frame, then re-encode all of it (what streaming costs).
            clip[:, :-1] = clip[:, 1:].clone()
            clip[:, -1] = next_frame()
            model(**{key: clip})

        return fn

    fns["DINOv2"] = lambda: peers["DINOv2"](pixel_values=next_frame())
    fns["VideoMAE"] = windowed(peers["VideoMAE"], "pixel_values")
    fns["V-JEPA 2"] = windowed(peers["V-JEPA 2"], "pixel_values_videos")
    clip_tokens = (window // TUBELET) * n
    info["DINOv2"] = {
        "kind": "image model, per frame",
        "input": f"{image}x{image}, patch {PATCH}",
        "tokens": 1 + n,
        "flops": vit_flops(n, 3 * PATCH * PATCH, d, layers, mlp, cls=True),
    }
    for label in ("VideoMAE", "V-JEPA 2"):
        info[label] = {
            "kind": f"clip model, last {window} frames re-encoded",
            "input": f"{window}x{image}x{image}, patch {PATCH}, tubelet {TUBELET}",
            "tokens": clip_tokens,
            "flops": vit_flops(clip_tokens, 3 * TUBELET * PATCH * PATCH, d, layers, mlp, False),
        }
    with torch.inference_mode():
        times = timed_rounds(fns, rounds, frames, block_seconds=1.0)
    rows = []
    for label, samples in times.items():
        ms = median_ms(samples)
        rows.append(
            {
                "size": name,
                "model": label,
                **info[label],
                "ms": ms,
                "vs_rvm": statistics.median(paired_ratios(samples, times["RVM"], rounds)),
                "rvm_vs": statistics.median(paired_ratios(times["RVM"], samples, rounds)),
                "samples": len(samples),
            }
        )
    return rows


def measure(
    sizes: list[str], threads: int = 2, rounds: int = 3, frames: int = 5, quick: bool = False
) -> list[dict[str, Any]]:
    """All rows for ``sizes`` (``S``, ``default``)."""
    rows: list[dict[str, Any]] = []
    for name in sizes:
        rows += measure_size(name, threads, rounds, frames, quick)
    return rows


def checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The README's targets per size: clip models >= 6x RVM, RVM <= 1.6x DINOv2."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["model"]: r for r in rows if r["size"] == size}
        for peer in ("VideoMAE", "V-JEPA 2"):
            ratio = by[peer]["vs_rvm"]
            out.append(
                {
                    "size": size,
                    "check": f"{peer} (windowed) / RVM per new frame",
                    "value": ratio,
                    "target": f">= {WINDOWED_MIN_RATIO:g}",
                    "ok": ratio >= WINDOWED_MIN_RATIO,
                }
            )
        ratio = by["DINOv2"]["rvm_vs"]
        out.append(
            {
                "size": size,
                "check": "RVM / DINOv2 (per frame) per new frame",
                "value": ratio,
                "target": f"<= {IMAGE_MAX_RATIO:g}",
                "ok": ratio <= IMAGE_MAX_RATIO,
            }
        )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """Latency table and target checks."""
    head = [
        "size",
        "model",
        "how it streams",
        "input",
        "tokens / new frame",
        "GFLOP / new frame",
        "ms / new frame (median)",
        "x RVM (same size, paired rounds)",
    ]
    table = [
        [
            r["size"],
            r["model"],
            r["kind"],
            r["input"],
            r["tokens"],
            r["flops"] / 1e9,
            r["ms"],
            f"{r['vs_rvm']:.2f}x",
        ]
        for r in rows
    ]
    check_rows = [
        [c["size"], c["check"], f"{c['value']:.2f}x", c["target"], "met" if c["ok"] else "missed"]
        for c in checks(rows)
    ]
    return (
        md_table(head, table)
        + "\n\n"
        + md_table(["size", "ratio", "measured", "target", ""], check_rows)
    )


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Bar chart of ms per new frame (log scale), one group per size."""
    plt = pyplot()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    colors = {
        "RVM": "tab:blue",
        "RVM native": "tab:cyan",
        "DINOv2": "tab:green",
        "VideoMAE": "tab:red",
        "V-JEPA 2": "tab:purple",
    }
    for ax, size in zip(axes[0], sizes, strict=True):
        sel = [r for r in rows if r["size"] == size]
        names = [r["model"] for r in sel]
        ms = [r["ms"] for r in sel]
        bars = ax.bar(names, ms, color=[colors.get(n, "gray") for n in names])
        for bar, r in zip(bars, sel, strict=True):
            ax.annotate(
                f"{r['ms']:.0f} ms\n{r['vs_rvm']:.1f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_yscale("log")
        ax.set_ylim(min(ms) / 2, max(ms) * 4)
        ax.set_ylabel("ms per new frame (median)")
        ax.set_title(f"{size} width/depth, streaming cost per new frame")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return [save_figure(fig, out / "peers.png")]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="S,default", help="S and/or default (see module doc)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all models")
    p.add_argument("--frames", type=int, default=5, help="max timed frames per model per round")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every model")
    p.add_argument("--out", default=None, help="directory for the PNG plot (none: no plot)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args: argparse.Namespace) -> int:
    sizes = [s for s in args.sizes.split(",") if s]
    rounds, frames = (1, 1) if args.quick else (args.rounds, args.frames)
    rows = measure(sizes, args.threads, rounds, frames, args.quick)
    print(markdown(rows))
    if args.out:
        for path in plot(rows, Path(args.out)):
            print(f"wrote {path}")
    return 0
