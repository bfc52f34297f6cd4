"""``rvm track``, ``rvm propagate`` and ``rvm eval {synthetic,tapvid,davis}`` implementations."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..config import parse_key_values
from ..readout.dis import DISConfig, propagate_flow
from ..readout.features import PixelFeatures
from ..readout.propagation import PropagationConfig, propagate_labels
from ..readout.tracker import IMAGE_ONLY, METHODS, TrackerConfig, track_video
from .evaluator import SyntheticEvalConfig, evaluate_synthetic, synthetic_columns
from .sources import FEATURE_SOURCES, feature_sources, load_checkpoint, parse_sources

FeatureFn = Callable[[np.ndarray], np.ndarray]
_load = load_checkpoint  # the name the readout benchmark imports


# -- shared helpers ----------------------------------------------------------------------------
def _config(cls, overrides: Sequence[str] | Mapping[str, object] | None, **fixed: object):
    """``cls(**fixed, **overrides)``; an unknown (or fixed) key is a one-line ValueError.

    ``part.key=value`` sets a field of a nested config (e.g. ``dis.preset=fast``).
    """
    if isinstance(overrides, Mapping):
        values = dict(overrides)
    else:
        values = parse_key_values(overrides or [])
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}
    nested: dict[str, dict[str, object]] = {}
    for key in [k for k in values if "." in k]:
        part, _, sub = key.partition(".")
        nested.setdefault(part, {})[sub] = values.pop(key)
    allowed = sorted(fields)
    unknown = sorted(set(values) - set(allowed)) + sorted(
        f"{p}.*" for p in nested if p not in fields or fields[p].default_factory is None
    )
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s) {', '.join(unknown)}; valid: {', '.join(allowed)}"
        )
    for part, sub in nested.items():
        values[part] = _config(type(fields[part].default_factory()), sub)
    return cls(**fixed, **values)


def _tracker_config(method: str, overrides: Sequence[str] | None) -> TrackerConfig:
    return _config(TrackerConfig, overrides, method=method)


def _prop_config(overrides: Sequence[str] | None) -> PropagationConfig:
    return _config(PropagationConfig, overrides)


def _dis_config(overrides: Sequence[str] | None) -> DISConfig:
    return _config(DISConfig, overrides)


def _parse_grid(text: str | None) -> tuple[int, int] | None:
    from ..preprocess import parse_size

    return parse_size(text) if text else None


def _feature_fn(args: argparse.Namespace, size: tuple[int, int] | None = None) -> FeatureFn:
    """The one feature source selected by --features/--checkpoint (track, propagate, tapvid,
    davis); ``size`` is the model input when --size is not given (default: the model's)."""
    if args.features == "pixels" and not args.grid:
        return PixelFeatures(_pixel_grid(args))  # the earlier protocol's 16x16, no model needed
    factories, _ = feature_sources(
        [args.features],
        [args.checkpoint],
        size=_parse_grid(args.size) or size,
        grid=_parse_grid(args.grid),
        pixel_grid=_parse_grid(args.pixel_grid),
        device=args.device,
        warmup=args.warmup,
    )
    return next(iter(factories.values()))()


def _warmup_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="extra model steps on a video's first frame (default: the model's num_source - 1, "
        "the warm start; 0 = cold)",
    )


def _pixel_grid(args: argparse.Namespace) -> tuple[int, int]:
    return _parse_grid(args.pixel_grid) or (16, 16)


def _features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--features",
        choices=FEATURE_SOURCES,
        default="model",
        help="model: the checkpoint; tokenizer: its tokenizer alone; random: its architecture "
        "with random weights; sift: dense OpenCV SIFT; pixels: raw pixel patches",
    )
    p.add_argument(
        "--grid", default=None, help="grid HxW of tokenizer/sift/pixels (default: the model's)"
    )


def _common_feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", default="default", help="checkpoint (default: shipped), config = random"
    )
    _features_arg(p)
    p.add_argument("--pixel-grid", default=None, help="grid HxW of --features pixels (16x16)")
    p.add_argument("--size", default=None, help="model input HxW (default: the model's)")
    p.add_argument("--device", default="cpu")
    _warmup_arg(p)


# -- rvm track ---------------------------------------------------------------------------------
def read_queries(path: str | Path) -> np.ndarray:
    """Queries [N,3] (t, x, y px) from .npy or .csv (comma/space separated, optional header)."""
    path = Path(path)
    if path.suffix == ".npy":
        q = np.load(path, allow_pickle=False)
    else:
        rows = []
        for line in path.read_text().splitlines():
            parts = line.replace(",", " ").split()
            if not parts or line.lstrip().startswith("#"):
                continue
            try:
                rows.append([float(v) for v in parts])
            except ValueError:
                if rows:
                    raise ValueError(f"bad query row in {path}: {line!r}") from None
                continue  # header line
        q = np.asarray(rows, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"queries must be rows of (t, x, y), got shape {q.shape}")
    return q


def track_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file, folder of images, or .npy uint8 [T,H,W,3]")
    p.add_argument("--queries", required=True, help=".npy/.csv rows (t, x, y) in video pixels")
    p.add_argument("--out", required=True, help="output .npz: tracks [N,T,2], occluded [N,T]")
    p.add_argument("--method", choices=METHODS, default=TrackerConfig.method)
    p.add_argument("--tracker", nargs="*", metavar="KEY=VALUE", help="TrackerConfig overrides")
    _common_feature_args(p)


def check_queries(queries: np.ndarray, num_frames: int, hw: tuple[int, int]) -> None:
    """Raise ValueError naming the first query row (t, x, y) that is non-finite or outside the
    video (frames 0..T-1, pixel centres -0.5..W-0.5 / H-0.5)."""
    h, w = hw
    for i, (t, x, y) in enumerate(queries):
        row = f"query row {i} (t={t:g}, x={x:g}, y={y:g})"
        if not all(map(math.isfinite, (t, x, y))):
            raise ValueError(f"{row}: not finite")
        if not 0 <= round(t) < num_frames:
            raise ValueError(f"{row}: frame outside the video's {num_frames} frames")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise ValueError(f"{row}: outside the {w}x{h} image")


def cmd_track(args: argparse.Namespace) -> int:
    from ..data.video import read_video

    queries = read_queries(args.queries)
    frames = read_video(args.video)
    check_queries(queries, len(frames), frames.shape[1:3])
    feats = None if args.method in IMAGE_ONLY else _feature_fn(args)
    t0 = time.perf_counter()
    tracks, occluded, scores = track_video(
        queries, frames=frames, features=feats, config=_tracker_config(args.method, args.tracker)
    )
    dt = time.perf_counter() - t0
    np.savez(args.out, tracks=tracks, occluded=occluded, scores=scores, query_points=queries)
    print(
        f"wrote {args.out}: {tracks.shape[0]} tracks x {tracks.shape[1]} frames "
        f"({args.method}, {len(frames) / dt:.1f} fps)"
    )
    return 0


# -- rvm propagate -----------------------------------------------------------------------------
def propagate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file, folder of images, or .npy uint8 [T,H,W,3]")
    p.add_argument("--first-mask", required=True, help="label PNG of frame 0 (palette/gray/RGB)")
    p.add_argument("--out", required=True, help="output .npy label ids [T,H,W] uint8")
    p.add_argument(
        "--method",
        choices=("rvm", "dis"),
        default="rvm",
        help="rvm (default, the best measured with the shipped model): label propagation on "
        "features, guided upsampling; dis: chained DIS optical flow warps (the node's default)",
    )
    p.add_argument(
        "--propagation",
        nargs="*",
        metavar="KEY=VALUE",
        help="PropagationConfig (rvm; default upsample=guided follows image edges, "
        "upsample=bilinear is the paper's protocol) or DISConfig (dis)",
    )
    _common_feature_args(p)


def cmd_propagate(args: argparse.Namespace) -> int:
    import cv2

    from ..data.video import read_video
    from .datasets import read_label_png

    frames = read_video(args.video)
    first = read_label_png(args.first_mask)
    if first.shape != frames.shape[1:3]:
        first = cv2.resize(
            first.astype(np.uint8), frames.shape[2:0:-1], interpolation=cv2.INTER_NEAREST
        )
    if args.method == "dis":
        masks = propagate_flow(frames, first, _dis_config(args.propagation))
    else:
        fn = _feature_fn(args)
        # Camera-resolution boundaries unless asked otherwise (upsample=bilinear: the paper's).
        cfg = _prop_config(["upsample=guided", *(args.propagation or [])])
        masks = propagate_labels((fn(f) for f in frames), first, cfg, guides=frames)
    np.save(args.out, masks.astype(np.uint8))
    print(f"wrote {args.out}: {masks.shape[0]} frames, {int(first.max())} objects")
    return 0


# -- rvm eval ----------------------------------------------------------------------------------
def eval_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="benchmark")
    s = sub.add_parser("synthetic", help="exact-GT tracking + propagation benchmark")
    s.add_argument(
        "--checkpoint",
        action="append",
        help="trained checkpoint (or config = random); repeat to compare several (rows by run)",
    )
    s.add_argument(
        "--features",
        default=None,
        help="feature sources scored by the readouts, comma-separated from "
        f"{','.join(FEATURE_SOURCES)} (all on the model's feature grid unless --grid); default: "
        "the checkpoint(s), plus pixels on a 16x16 grid when --methods names pixels",
    )
    s.add_argument(
        "--grid",
        default=None,
        help="grid HxW of the tokenizer, sift and pixels sources (default: the model's feature "
        "grid at --size)",
    )
    s.add_argument("--random-baseline", action="store_true", help="also random weights")
    s.add_argument(
        "--suite",
        choices=("v1", "v2"),
        default="v1",
        help="v1: one warped plane + pasted occluders; v2: layers with parallax, deformation, "
        "returning occluders, lighting changes and motion blur",
    )
    s.add_argument(
        "--methods",
        default="rvm,hybrid,lk,dis,pixels",
        help="readouts and baselines, from rvm,hybrid,lk,dis,pixels (dis: flow tracks + masks; "
        "pixels: the pixels source when --features is not given)",
    )
    s.add_argument(
        "--upsample",
        default="bilinear,guided",
        help="label upsampling of feature propagation, rows J&F / J&F guided",
    )
    s.add_argument(
        "--frames", type=int, default=None, help="frames per sequence (v1 48, v2 64; long: 300)"
    )
    s.add_argument("--sequences", type=int, default=None, help="limit the number of sequences")
    s.add_argument("--image-size", default="480x640", help="benchmark frame HxW")
    s.add_argument("--ranges", default=None, help="frame ranges to score apart, e.g. 1:100,200:300")
    s.add_argument(
        "--range-queries",
        action="store_true",
        help="query each range afresh at its first frame (feature stability over a long stream)",
    )
    s.add_argument("--no-stereo", action="store_true", help="skip the Middlebury stereo pair")
    s.add_argument("--no-propagation", action="store_true")
    s.add_argument("--root", default="data/real", help="folder holding the held-out clips")
    s.add_argument(
        "--clips",
        default=None,
        help="comma-separated clips under --root instead of the held-out ones (to tune on)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None, help="write all results here")
    _eval_common(s)
    t = sub.add_parser("tapvid", help="TAP-Vid (DAVIS/Kinetics pickle, or .npz) point tracking")
    t.add_argument("data", help="TAP-Vid .pkl / .npz file or a folder of them")
    t.add_argument("--checkpoint", default="default", help="default: the shipped model")
    t.add_argument("--method", choices=METHODS, default=TrackerConfig.method)
    _features_arg(t)
    t.add_argument("--query-mode", choices=("first", "strided"), default="first")
    t.add_argument("--resize", default="256x256", help="frames HxW the tracker sees")
    t.add_argument("--trust-pickle", action="store_true", help="allow unpickling (trusted only)")
    t.add_argument("--max-videos", type=int, default=None)
    t.add_argument("--json", default=None)
    _eval_common(t)
    d = sub.add_parser("davis", help="DAVIS-2017 semi-supervised label propagation (J&F)")
    d.add_argument("data", help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets)")
    d.add_argument("--checkpoint", default="default", help="default: the shipped model")
    _features_arg(d)
    d.add_argument("--split", default="val")
    d.add_argument("--max-sequences", type=int, default=None)
    d.add_argument("--json", default=None)
    _eval_common(d)


def _eval_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default=None, help="model input HxW (default: the model's)")
    p.add_argument("--pixel-grid", default=None, help="grid HxW of pixel features")
    p.add_argument("--tracker", nargs="*", metavar="KEY=VALUE", help="TrackerConfig overrides")
    p.add_argument("--propagation", nargs="*", metavar="KEY=VALUE", help="PropagationConfig")
    p.add_argument("--device", default="cpu")
    _warmup_arg(p)


def cmd_eval(args: argparse.Namespace) -> int:
    return {"synthetic": eval_synthetic, "tapvid": eval_tapvid, "davis": eval_davis}[
        args.benchmark
    ](args)


def _write_json(path: str | None, results: object) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=float))
        print(f"wrote {path}")


def _fmt(v: float | None) -> str:
    return "    -" if v is None or not np.isfinite(v) else f"{v:5.3f}"


# .. synthetic ...................................................................................
_SYNTHETIC_METHODS = ("rvm", "hybrid", "lk", "dis", "pixels")
_COLUMN_NAMES = {
    "average_jaccard": "AJ",
    "average_pts_within_thresh": "delta_avg",
    "occlusion_accuracy": "OA",
    "JF_mean": "J&F",
    "JF_nearest": "J&F near",
    "JF_guided": "J&F guid",
    "stereo_average_jaccard": "stereo AJ",
    "stereo_average_pts_within_thresh": "stereo delta",
    "AJ_background": "AJ bg",
    "AJ_objects": "AJ objs",
    "AJ_occluders": "AJ occl",
    "AJ_reappearing": "AJ reapp",
}


def _split(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _parse_ranges(text: str | None) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    out = []
    for part in text.split(","):
        a, b = part.split(":")
        out.append((int(a), int(b)))
    return tuple(out)


def _synthetic_config(args: argparse.Namespace) -> SyntheticEvalConfig:
    """The methods, readout settings, ranges and parts of the benchmark the flags select."""
    methods = set(_split(args.methods))
    unknown = methods - set(_SYNTHETIC_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}")
    upsample = [] if args.no_propagation else _split(args.upsample)
    prop = _prop_config(args.propagation)
    return SyntheticEvalConfig(
        trackers={m: _tracker_config(m, args.tracker) for m in METHODS if m in methods},
        propagation={u: dataclasses.replace(prop, upsample=u) for u in upsample},
        flow_masks="dis" in methods and not args.no_propagation,
        ranges=_parse_ranges(args.ranges),
        range_queries=bool(args.range_queries),
        stereo=not args.no_stereo,
    )


def _synthetic_sources(args: argparse.Namespace) -> tuple[dict, dict]:
    """Feature source factories by row label, and what each is, from --features/--checkpoint."""
    from ..checkpoint import DEFAULT_CHECKPOINT

    ckpts = list(args.checkpoint or [])
    if not ckpts:
        if DEFAULT_CHECKPOINT.is_file():  # the shipped default model
            ckpts = [str(DEFAULT_CHECKPOINT)]
        else:
            print("no --checkpoint and no default model: random 'tiny' weights only")
            ckpts = ["tiny"]
    pixel_grid = _parse_grid(args.pixel_grid)
    if args.features is None:  # the earlier protocol: pixels on their own 16x16 grid
        names = ["model"] + (["pixels"] if "pixels" in _split(args.methods) else [])
        pixel_grid = pixel_grid or _parse_grid(args.grid) or (16, 16)
    else:
        names = parse_sources(args.features)
    if args.random_baseline and "random" not in names:
        names.append("random")
    return feature_sources(
        names,
        ckpts,
        size=_parse_grid(args.size),
        grid=_parse_grid(args.grid),
        pixel_grid=pixel_grid,
        device=args.device,
        warmup=args.warmup,
        seed=args.seed,
    )


def _synthetic_benchmark(args: argparse.Namespace):
    """(config, lazily rendered sequences) of the selected suite, sources and size."""
    from ..preprocess import parse_size
    from .layered import LayeredConfig, make_layered_benchmark
    from .synthetic import HELD_OUT_CLIPS, SyntheticConfig, make_benchmark

    clips = tuple(_split(args.clips)) if args.clips else HELD_OUT_CLIPS
    cls, make = (
        (SyntheticConfig, make_benchmark)
        if args.suite == "v1"
        else (LayeredConfig, make_layered_benchmark)
    )
    kw = {"image_hw": parse_size(args.image_size), "seed": args.seed}
    if args.frames is not None:
        kw["num_frames"] = args.frames
    config = cls(**kw)
    return config, make(config, root=args.root, clips=clips, max_sequences=args.sequences)


def eval_synthetic(args: argparse.Namespace) -> int:
    """``rvm eval synthetic``: score, print the table, write the JSON."""
    config = _synthetic_config(args)
    sources, about = _synthetic_sources(args) if config.needs_features else ({}, {})
    bench, sequences = _synthetic_benchmark(args)
    results = evaluate_synthetic(sequences, sources, config, progress=partial(print, flush=True))
    videos = results["videos"]
    print(
        f"synthetic benchmark {args.suite}: {len(videos)} sequences x {bench.num_frames} frames "
        f"at {bench.image_hw[1]}x{bench.image_hw[0]} ({', '.join(videos)}); TAP-Vid 'first', "
        "256x256"
    )
    for label, a in about.items():
        print(f"  features {label}: {a['source']} on a {a['grid'][0]}x{a['grid'][1]} grid")
    _print_table(results["rows"], synthetic_columns(config, args.suite))
    _write_json(
        args.json,
        {
            "suite": args.suite,
            "config": dataclasses.asdict(bench),
            "ranges": [list(r) for r in config.ranges],
            "range_queries": config.range_queries,
            "videos": videos,
            "rows": results["rows"],
            "features": about,
        },
    )
    return 0


def _print_table(table: list[dict], cols: list[str]) -> None:
    width = max([8, *(len(row["features"]) for row in table)])
    header = f"{'method':<11} | {'features':<{width}} | " + " | ".join(
        f"{_COLUMN_NAMES.get(c, c):>9}" for c in cols
    )
    print(header)
    print("-" * len(header))
    for row in table:
        vals = " | ".join(f"{_fmt(row.get(c)):>9}" for c in cols)
        print(f"{row['method']:<11} | {row['features']:<{width}} | {vals}")


# .. TAP-Vid .....................................................................................
def eval_tapvid(args: argparse.Namespace) -> int:
    import cv2

    from ..preprocess import parse_size
    from .datasets import read_tapvid, tapvid_queries
    from .metrics import tapvid_mean, tapvid_video_metrics

    h, w = parse_size(args.resize)
    fn = None
    if args.method not in IMAGE_ONLY:
        fn = _feature_fn(args)
    per_video, names = [], []
    for i, v in enumerate(read_tapvid(args.data, trust_pickle=args.trust_pickle)):
        if args.max_videos is not None and i >= args.max_videos:
            break
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in v.video])
        # TAP-Vid coordinates: normalised [0,1] x size (no half-pixel shift), as tapnet does.
        pts = v.points * np.array([w, h])
        q, rows = tapvid_queries(v.occluded, pts, args.query_mode)
        if hasattr(fn, "reset"):
            fn.reset()
        tr, occ, _ = track_video(
            q, frames=frames, features=fn, config=_tracker_config(args.method, args.tracker)
        )
        m = tapvid_video_metrics(
            q[:, [0, 2, 1]], v.occluded[rows], pts[rows], occ, tr, (h, w), args.query_mode
        )
        per_video.append(m)
        names.append(v.name)
        print(f"  {v.name}: AJ {float(m['average_jaccard'][0]):.3f}", flush=True)
    if not per_video:
        raise ValueError("no videos")
    mean = tapvid_mean(per_video)
    print(f"TAP-Vid ({args.query_mode}), {len(names)} videos, method {args.method}")
    keys = ["average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"]
    keys += [f"jaccard_{d}" for d in (1, 2, 4, 8, 16)]
    for k in keys:
        print(f"{k:>28}: {mean[k]:.4f}")
    _write_json(args.json, {"mean": mean, "videos": names})
    return 0


# .. DAVIS .......................................................................................
def eval_davis(args: argparse.Namespace) -> int:
    from .datasets import read_davis
    from .metrics import DAVIS_VOID_LABEL, davis_aggregate, davis_summary

    size = None
    if args.features != "pixels" and args.size is None:
        # The paper's DAVIS resolution 480x880 = a 30x55 grid at patch 16: keep that grid.
        s = load_checkpoint(args.checkpoint, args.device).config.feature_stride
        size = (30 * s, 55 * s)
    fn = _feature_fn(args, size=size)
    summaries, names = [], []
    for seq in read_davis(args.data, split=args.split, max_sequences=args.max_sequences):
        if hasattr(fn, "reset"):
            fn.reset()
        first = np.where(seq.labels[0] == DAVIS_VOID_LABEL, 0, seq.labels[0])
        n = int(first.max()) + 1
        cfg = _prop_config(args.propagation)
        feats = (fn(f) for f in seq.frames)
        pred = propagate_labels(feats, first, cfg, num_labels=n, guides=seq.frames)
        s = davis_summary(seq.labels, pred)
        summaries.append(s)
        names.append(seq.name)
        print(f"  {seq.name}: J&F {s['JF_mean']:.3f}", flush=True)
    if not summaries:
        raise ValueError("no sequences")
    agg = davis_aggregate(summaries)
    print(f"DAVIS-2017 {args.split} (semi-supervised), {len(names)} sequences")
    print(" | ".join(f"{k}" for k in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall")))
    print(
        " | ".join(f"{agg[k]:.3f}" for k in ("JF_mean", "J_mean", "J_recall", "F_mean", "F_recall"))
    )
    _write_json(args.json, {"aggregate": agg, "sequences": names})
    return 0
