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
from ..readout.features import ModelFeatures, PixelFeatures
from ..readout.propagation import PropagationConfig, propagate_labels
from ..readout.tracker import IMAGE_ONLY, METHODS, TrackerConfig, track_video

FeatureFn = Callable[[np.ndarray], np.ndarray]


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


def _load(checkpoint: str, device: str = "cpu"):
    """A model from a checkpoint path, or random weights from a config name ("tiny", "S"...)."""
    from ..checkpoint import build_model, load_model
    from ..config import CONFIGS

    if checkpoint in CONFIGS:
        return build_model(checkpoint, seed=0).to(device).eval()
    return load_model(checkpoint, device=device)


def _random_like(model, seed: int = 0):
    """Same architecture as ``model`` with fresh random weights (the untrained baseline)."""
    from ..checkpoint import build_model

    return build_model(model.config, seed=seed).eval()


def _model_size(size: str | None) -> tuple[int, int] | None:
    from ..preprocess import parse_size

    return parse_size(size) if size else None


def _feature_fn(args: argparse.Namespace) -> FeatureFn | None:
    """The feature source selected by --features/--checkpoint for track/propagate."""
    if args.features == "pixels":
        return PixelFeatures(_pixel_grid(args))
    model = _load(args.checkpoint, args.device)
    return ModelFeatures(model, size=_model_size(args.size), device=args.device, warmup=args.warmup)


def _warmup_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="extra model steps on a video's first frame (default: the model's num_source - 1, "
        "the warm start; 0 = cold)",
    )


def _pixel_grid(args: argparse.Namespace) -> tuple[int, int]:
    from ..preprocess import parse_size

    return parse_size(args.pixel_grid) if args.pixel_grid else (16, 16)


def _common_feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", default="default", help="checkpoint (default: shipped), config = random"
    )
    p.add_argument("--features", choices=("model", "pixels"), default="model")
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
    p.add_argument("--method", choices=METHODS, default="hybrid")
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
        help="rvm: label propagation on features; dis: chained DIS optical flow warps",
    )
    p.add_argument(
        "--propagation",
        nargs="*",
        metavar="KEY=VALUE",
        help="PropagationConfig (rvm; upsample=guided follows image edges) or DISConfig (dis)",
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
        cfg = _prop_config(args.propagation)
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
        help="readouts and baselines, from rvm,hybrid,lk,dis,pixels (dis: flow tracks + masks)",
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
    t.add_argument("--method", choices=METHODS, default="hybrid")
    t.add_argument("--features", choices=("model", "pixels"), default="model")
    t.add_argument("--query-mode", choices=("first", "strided"), default="first")
    t.add_argument("--resize", default="256x256", help="frames HxW the tracker sees")
    t.add_argument("--trust-pickle", action="store_true", help="allow unpickling (trusted only)")
    t.add_argument("--max-videos", type=int, default=None)
    t.add_argument("--json", default=None)
    _eval_common(t)
    d = sub.add_parser("davis", help="DAVIS-2017 semi-supervised label propagation (J&F)")
    d.add_argument("data", help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets)")
    d.add_argument("--checkpoint", default="default", help="default: the shipped model")
    d.add_argument("--features", choices=("model", "pixels"), default="model")
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
def _checkpoint_label(path: str, taken: dict) -> str:
    """Row label of one of several checkpoints: its run directory (or file) name, unique."""
    p = Path(path)
    label = p.parent.name if p.name == "model.safetensors" else p.stem
    return label if label not in taken else f"{label}#{len(taken)}"


def _synthetic_sources(args: argparse.Namespace, methods: set[str]) -> dict[str, Callable]:
    """Feature source factories by label: trained (or one per checkpoint) / random / pixels."""
    from ..config import CONFIGS

    sources: dict[str, Callable[[], FeatureFn]] = {}
    size = _model_size(args.size)
    ckpts = list(args.checkpoint or [])
    if not ckpts:
        from ..checkpoint import DEFAULT_CHECKPOINT

        if DEFAULT_CHECKPOINT.is_file():  # the shipped default model
            ckpts = [str(DEFAULT_CHECKPOINT)]
        else:
            print("no --checkpoint and no default model: random 'tiny' weights only")
            ckpts = ["tiny"]
    models = {}
    base = None  # the architecture of the random baseline: the first model loaded
    for ckpt in ckpts:
        model = _load(ckpt, args.device)
        base = base or model
        if ckpt in CONFIGS:  # a config name: random weights only
            continue
        label = "trained" if len(ckpts) == 1 else _checkpoint_label(ckpt, models)
        models[label] = model
        sources[label] = lambda m=model: ModelFeatures(
            m, size=size, device=args.device, warmup=args.warmup
        )
    if args.random_baseline or not models:
        rnd = _random_like(base, seed=args.seed)
        sources["random"] = lambda: ModelFeatures(
            rnd, size=size, device=args.device, warmup=args.warmup
        )
    if "pixels" in methods:
        grid = _pixel_grid(args)
        sources["pixels"] = lambda: PixelFeatures(grid)
    return sources


def _stereo_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Middlebury motorcycle (scikit-image) as a 2-frame video with GT x_r = x_l - d."""
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    h, w = left.shape[:2]
    ys, xs = np.meshgrid(np.linspace(20, h - 21, 10), np.linspace(20, w - 21, 12), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], -1)
    d = disp[np.rint(pts[:, 1]).astype(int), np.rint(pts[:, 0]).astype(int)].astype(np.float64)
    gt1 = pts - np.stack([np.nan_to_num(d, posinf=0.0), np.zeros_like(d)], -1)
    occ1 = ~np.isfinite(d) | (gt1[:, 0] < 0)
    tracks = np.stack([pts, gt1], axis=1)
    occluded = np.stack([np.zeros(len(pts), bool), occ1], axis=1)
    queries = np.concatenate([np.zeros((len(pts), 1)), pts], 1)
    return np.stack([left, right]), queries, tracks, occluded


def _parse_ranges(text: str | None) -> list[tuple[int, int]]:
    if not text:
        return []
    out = []
    for part in text.split(","):
        a, b = part.split(":")
        out.append((int(a), int(b)))
    return out


def _synthetic_benchmark(args: argparse.Namespace):
    """(config, lazily rendered sequences) of the selected suite, sources and size."""
    from ..preprocess import parse_size
    from .layered import LayeredConfig, make_layered_benchmark
    from .synthetic import HELD_OUT_CLIPS, SyntheticConfig, make_benchmark

    clips = tuple(c.strip() for c in args.clips.split(",")) if args.clips else HELD_OUT_CLIPS
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


_SYNTHETIC_METHODS = ("rvm", "hybrid", "lk", "dis", "pixels")


def eval_synthetic(args: argparse.Namespace) -> int:
    from .layered import track_groups
    from .synthetic import mask_scores, range_queries, track_scores

    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = methods - set(_SYNTHETIC_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}")
    upsample = [u.strip() for u in args.upsample.split(",") if u.strip()]
    prop_cfgs = {
        u: dataclasses.replace(_prop_config(args.propagation), upsample=u) for u in upsample
    }
    readouts = [m for m in ("rvm", "hybrid") if m in methods]
    image_only = [m for m in IMAGE_ONLY if m in methods]
    feature_prop = not args.no_propagation and bool(prop_cfgs)
    sources = _synthetic_sources(args, methods) if readouts or feature_prop else {}
    ranges = _parse_ranges(args.ranges)
    config, benchmark = _synthetic_benchmark(args)
    rows: dict[tuple[str, str], dict[str, list]] = {}

    def record(key: tuple[str, str], metric: str, value: float) -> None:
        rows.setdefault(key, {}).setdefault(metric, []).append(value)

    def score_tracks(key, q, gt, gto, tr, occ, hw, prefix=""):
        m = track_scores(q, gt, gto, tr, occ, hw)
        for name in ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"):
            record(key, prefix + name, m[name])
        for a, b in ranges if not prefix and not args.range_queries else []:
            if b <= gt.shape[1]:
                r = track_scores(q, gt, gto, tr, occ, hw, frame_range=(a, b))
                record(key, f"AJ[{a}:{b}]", r["average_jaccard"])
                record(key, f"delta[{a}:{b}]", r["average_pts_within_thresh"])

    def score_groups(key, seq, tr, occ, hw):
        """v2: AJ of the tracks on the background, objects, occluders, and re-appearing ones."""
        if seq.layer_of is None:
            return
        for group, sel in track_groups(seq).items():
            if sel.any():
                g = (seq.query_points[sel], seq.tracks[sel], seq.occluded[sel], tr[sel], occ[sel])
                record(key, f"AJ_{group}", track_scores(*g, hw)["average_jaccard"])

    def score_fresh_queries(key, track, gt, gto, hw):
        """--range-queries: new queries at each range's first frame, scored on that range."""
        q, src, which = range_queries(gt, gto, ranges)
        tr, occ, _ = track(q)
        for i, (a, b) in enumerate(ranges):
            sel = which == i
            if b <= gt.shape[1] and sel.any():
                g, go = gt[src[sel]], gto[src[sel]]
                r = track_scores(q[sel], g, go, tr[sel], occ[sel], hw, frame_range=(a, b))
                record(key, f"AJ[{a}:{b}]", r["average_jaccard"])
                record(key, f"delta[{a}:{b}]", r["average_pts_within_thresh"])

    t_start = time.perf_counter()
    videos = []
    for seq in benchmark:
        videos.append(seq.name)
        hw = seq.frames.shape[1:3]
        fresh = bool(ranges and args.range_queries)
        for m in image_only:
            track_img = partial(
                track_video, frames=seq.frames, config=_tracker_config(m, args.tracker)
            )
            tr, occ, _ = track_img(seq.query_points)
            score_tracks((m, "none"), seq.query_points, seq.tracks, seq.occluded, tr, occ, hw)
            score_groups((m, "none"), seq, tr, occ, hw)
            if fresh:
                score_fresh_queries((m, "none"), track_img, seq.tracks, seq.occluded, hw)
        if "dis" in methods and not args.no_propagation:
            cfg = _tracker_config("dis", args.tracker).dis
            pred = propagate_flow(seq.frames, seq.labels[0], cfg)
            record(("dis", "none"), "JF_mean", mask_scores(seq.labels, pred)["JF_mean"])
        for label, make in sources.items():
            fn = make()
            feats = [fn(f) for f in seq.frames]
            for r in readouts:
                cfg = _tracker_config(r, args.tracker)
                track = partial(track_video, frames=seq.frames, features=feats, config=cfg)
                tr, occ, _ = track(seq.query_points)
                score_tracks((r, label), seq.query_points, seq.tracks, seq.occluded, tr, occ, hw)
                score_groups((r, label), seq, tr, occ, hw)
                if fresh:
                    score_fresh_queries((r, label), track, seq.tracks, seq.occluded, hw)
            for u, pcfg in prop_cfgs.items() if not args.no_propagation else ():
                pred = propagate_labels(feats, seq.labels[0], pcfg, guides=seq.frames)
                js = mask_scores(seq.labels, pred)
                record(("propagation", label), _JF_COLUMN[u], js["JF_mean"])
        print(f"  {seq.name}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    if not args.no_stereo:
        frames, q, gt, gto = _stereo_case()
        hw = frames.shape[1:3]
        for m in image_only:
            tr, occ, _ = track_video(q, frames=frames, config=_tracker_config(m, args.tracker))
            score_tracks((m, "none"), q, gt, gto, tr, occ, hw, prefix="stereo_")
        for label, make in sources.items():
            fn = make()
            # Two views, not two time steps: each view is its own stream (a static clip after
            # the warm start), so the right view's features carry no state from the left one.
            feats = []
            for f in frames:
                fn.reset()
                feats.append(fn(f))
            for r in readouts:
                cfg = _tracker_config(r, args.tracker)
                tr, occ, _ = track_video(q, frames=frames, features=feats, config=cfg)
                score_tracks((r, label), q, gt, gto, tr, occ, hw, prefix="stereo_")

    table = _synthetic_table(rows, sources, readouts)
    jf_cols = [_JF_COLUMN[u] for u in upsample] if upsample else ["JF_mean"]
    cols = ["average_jaccard", "average_pts_within_thresh", "occlusion_accuracy", *jf_cols]
    if not args.no_stereo:
        cols += ["stereo_average_jaccard", "stereo_average_pts_within_thresh"]
    if args.suite == "v2":
        cols += [f"AJ_{g}" for g in ("background", "objects", "occluders", "reappearing")]
    cols += [f"AJ[{a}:{b}]" for a, b in ranges] + [f"delta[{a}:{b}]" for a, b in ranges]
    print(
        f"synthetic benchmark {args.suite}: {len(videos)} sequences x {config.num_frames} frames "
        f"at {config.image_hw[1]}x{config.image_hw[0]} ({', '.join(videos)}); TAP-Vid 'first', "
        "256x256"
    )
    _print_table(table, cols)
    _write_json(
        args.json,
        {
            "suite": args.suite,
            "config": dataclasses.asdict(config),
            "ranges": ranges,
            "range_queries": bool(args.range_queries),
            "videos": videos,
            "rows": table,
        },
    )
    return 0


# J&F column of each label upsampling mode (the DIS row's J&F is its own flow warping).
_JF_COLUMN = {"bilinear": "JF_mean", "nearest": "JF_nearest", "guided": "JF_guided"}
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


def _synthetic_table(rows: dict, sources: dict, readouts: list[str]) -> list[dict]:
    """Per-video means -> table rows; propagation J&F is shown on every row using its features."""
    table = []
    for (method, label), metrics in rows.items():
        if method == "propagation":
            continue
        row = {"method": method, "features": label}
        row.update({k: float(np.mean(v)) for k, v in metrics.items()})
        prop = rows.get(("propagation", label), {})
        for col in _JF_COLUMN.values():
            if col in prop:
                row[col] = float(np.mean(prop[col]))
        row.setdefault("JF_mean", None)
        table.append(row)
    for label in sources:  # propagation-only rows when no readout was requested
        if not readouts and ("propagation", label) in rows:
            row = {"method": "propagation", "features": label}
            row.update({k: float(np.mean(v)) for k, v in rows[("propagation", label)].items()})
            table.append(row)
    return table


def _print_table(table: list[dict], cols: list[str]) -> None:
    header = f"{'method':<11} | {'features':<8} | " + " | ".join(
        f"{_COLUMN_NAMES.get(c, c):>9}" for c in cols
    )
    print(header)
    print("-" * len(header))
    for row in table:
        vals = " | ".join(f"{_fmt(row.get(c)):>9}" for c in cols)
        print(f"{row['method']:<11} | {row['features']:<8} | {vals}")


# .. TAP-Vid .....................................................................................
def eval_tapvid(args: argparse.Namespace) -> int:
    import cv2

    from ..preprocess import parse_size
    from .datasets import read_tapvid, tapvid_queries
    from .metrics import tapvid_mean, tapvid_video_metrics

    h, w = parse_size(args.resize)
    fn = None
    if args.method not in IMAGE_ONLY:
        args.pixel_grid = getattr(args, "pixel_grid", None)
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

    args.pixel_grid = getattr(args, "pixel_grid", None)
    if args.features == "model" and args.size is None:
        # The paper's DAVIS resolution 480x880 = a 30x55 grid at patch 16: keep that grid.
        model = _load(args.checkpoint, args.device)
        p = model.config.patch_size
        fn: FeatureFn = ModelFeatures(
            model, size=(30 * p, 55 * p), device=args.device, warmup=args.warmup
        )
    else:
        fn = _feature_fn(args)
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
