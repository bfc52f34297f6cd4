"""``python -m benchmarks tracker``: point tracker + label propagation fps, alone and with the model
step.

Input frames are 640x480 (a real frame panned 2 px/frame), features are the model's grid and
width (the shipped default: 12x16 x 128). Propagation is timed with bilinear and with guided
(camera-resolution) label upsampling, and DIS flow mask warping; the full pipeline uses guided
upsampling. The acceptance target is >= 15 fps for model + tracker + propagation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from .common import sample_frames


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="default", help="checkpoint (default: the shipped model) or config name"
    )
    p.add_argument("--image-size", default="480x640", help="camera frame HxW")
    p.add_argument("--tracks", type=int, default=64)
    p.add_argument("--frames", type=int, default=60, help="timed frames per measurement")
    p.add_argument("--methods", default="rvm,hybrid,lk,dis")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def _fps(step: Callable[[int], None], n: int, warmup: int = 3) -> float:
    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(n):
        step(warmup + i)
    return n / (time.perf_counter() - t0)


def bench_tracker(
    config: str = "default",
    image_hw: tuple[int, int] = (480, 640),
    tracks: int = 64,
    frames: int = 60,
    methods: tuple[str, ...] = ("rvm", "hybrid", "lk", "dis"),
) -> dict[str, float]:
    """Frames per second of each stage and of the full pipeline -> {name: fps}."""
    from rvm_core.eval.commands import _load
    from rvm_core.readout.dis import FlowMaskPropagator
    from rvm_core.readout.features import ModelFeatures
    from rvm_core.readout.propagation import LabelPropagator, PropagationConfig
    from rvm_core.readout.tracker import PointTracker, TrackerConfig

    model = _load(config)
    fn = ModelFeatures(model)
    n = frames + 4
    imgs = list(sample_frames(image_hw, n))
    feats = [fn(f) for f in imgs]
    grid, dim = feats[0].shape[:2], feats[0].shape[2]
    rng = np.random.default_rng(0)
    pts = rng.uniform([20, 20], [image_hw[1] - 20, image_hw[0] - 20], size=(tracks, 2))
    first = np.zeros(image_hw, np.int64)
    first[100:300, 200:400] = 1
    first[300:420, 50:200] = 2
    out: dict[str, float] = {"grid_h": grid[0], "grid_w": grid[1], "dim": dim}

    fn.reset()
    out["model_step"] = _fps(lambda i: fn(imgs[i % n]), frames)

    def make_tracker(method: str) -> PointTracker:
        tr = PointTracker(TrackerConfig(method=method))
        tr.update(feats[0], imgs[0])
        tr.add(pts)
        return tr

    for method in methods:
        tr = make_tracker(method)
        out[f"tracker_{method}"] = _fps(
            lambda i, tr=tr: tr.update(feats[i % n], imgs[i % n]), frames
        )

    guided = PropagationConfig(upsample="guided")
    for name, cfg in (("propagation", PropagationConfig()), ("propagation_guided", guided)):
        prop = LabelPropagator(cfg)
        prop.start(feats[0], first)
        out[name] = _fps(lambda i, p=prop: p.step(feats[i % n], imgs[i % n]), frames)
    flow = FlowMaskPropagator()
    flow.start(imgs[0], first)
    out["propagation_dis"] = _fps(lambda i: flow.step(imgs[i % n]), frames)

    # Full pipeline: model step + tracker + guided propagation on each frame.
    for method in methods:
        tr = make_tracker(method)
        prop = LabelPropagator(guided)
        prop.start(feats[0], first)
        fn.reset()

        def full(i: int, tr: PointTracker = tr, prop: LabelPropagator = prop) -> None:
            f = fn(imgs[i % n])
            tr.update(f, imgs[i % n])
            prop.step(f, imgs[i % n])

        out[f"full_{method}"] = _fps(full, frames)
    return out


def run(args: argparse.Namespace) -> int:
    import os

    from rvm_core.preprocess import parse_size

    if "OPENBLAS_NUM_THREADS" not in os.environ:  # an explicit setting wins
        # numpy's OpenBLAS threads make the readouts' small matmuls ~100x slower when the cores
        # are busy (measured: 64x128 @ 128x256 took 13-24 ms vs 0.15 ms single-threaded), and
        # they fight torch's threads: measure with one, as the node runs.
        from rvm_ros.blas_threads import limit_blas_threads

        limit_blas_threads(1)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    hw = parse_size(args.image_size)
    r = bench_tracker(args.config, hw, args.tracks, args.frames, methods)
    print(
        f"tracker bench: {hw[1]}x{hw[0]} frames, {args.tracks} tracks, "
        f"features {int(r['grid_h'])}x{int(r['grid_w'])}x{int(r['dim'])} ({args.config})"
    )
    for k, v in r.items():
        if k not in ("grid_h", "grid_w", "dim"):
            print(f"{k:>20}: {v:7.1f} fps  ({1000 / v:6.1f} ms/frame)")
    ok = all(r[f"full_{m}"] >= 15 for m in methods)
    print(f"target >= 15 fps (model + tracker + guided propagation): {'met' if ok else 'NOT met'}")
    return 0
