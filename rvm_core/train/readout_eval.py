"""Score a trained readout on the held-out synthetic suites and the Middlebury stereo pair.

The same sequences, queries and TAP-Vid metrics as ``rvm eval synthetic`` (its generators,
``track_scores`` and stereo case), with ``PointTracker(method="trained")`` over the features of
the readout's checkpoint and, with ``random_baseline``, of the same architecture with random
weights (the same readout on features that carry no training).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..eval.commands import _load, _random_like, _stereo_case
from ..eval.layered import LayeredConfig, make_layered_benchmark
from ..eval.synthetic import HELD_OUT_CLIPS, SyntheticConfig, make_benchmark, track_scores
from ..readout.features import ModelFeatures
from ..readout.tracker import TrackerConfig, track_video

METRICS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


def evaluate_readout(
    readout: str,
    checkpoint: str,
    suites: tuple[str, ...] = ("v1", "v2"),
    random_baseline: bool = True,
    root: str = "data/real",
    stereo: bool = True,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """-> {"<suite>/<features>": {metric: mean over sequences}} (+ "stereo/<features>")."""
    model = _load(checkpoint, device)
    sources = {"trained": model}
    if random_baseline:
        sources["random"] = _random_like(model)
    cfg = TrackerConfig(method="trained", readout=readout)
    results: dict[str, dict[str, float]] = {}
    for suite in suites:
        if suite == "v1":
            bench = make_benchmark(SyntheticConfig(), root=root, clips=HELD_OUT_CLIPS)
        else:
            bench = make_layered_benchmark(LayeredConfig(), root=root, clips=HELD_OUT_CLIPS)
        scores: dict[str, list[dict]] = {k: [] for k in sources}
        for seq in bench:
            hw = seq.frames.shape[1:3]
            for label, m in sources.items():
                fn = ModelFeatures(m, device=device)
                feats = [fn(f) for f in seq.frames]
                tr, occ, _ = track_video(
                    seq.query_points, frames=seq.frames, features=feats, config=cfg
                )
                scores[label].append(
                    track_scores(seq.query_points, seq.tracks, seq.occluded, tr, occ, hw)
                )
            print(f"  {suite} {seq.name}: done", flush=True)
        for label, rows in scores.items():
            results[f"{suite}/{label}"] = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
    if stereo:
        frames, q, gt, gto = _stereo_case()
        hw = frames.shape[1:3]
        for label, m in sources.items():
            feats = []
            for f in frames:  # two views, each its own stream
                fn = ModelFeatures(m, device=device)
                feats.append(fn(f))
            tr, occ, _ = track_video(q, frames=frames, features=feats, config=cfg)
            s = track_scores(q, gt, gto, tr, occ, hw)
            results[f"stereo/{label}"] = {k: float(s[k]) for k in METRICS}
    return results


def print_results(results: dict[str, dict[str, float]], json_path: str | None = None) -> None:
    """One line per suite/features: AJ, delta_avg, OA; optionally also written as JSON."""
    print(f"{'suite/features':<16} {'AJ':>6} {'delta':>6} {'OA':>6}")
    for key, m in results.items():
        vals = " ".join(f"{m[k]:6.3f}" for k in METRICS)
        print(f"{key:<16} {vals}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
        print(f"wrote {json_path}")


# Training-side clips and a seed the held-out evaluation never uses: where thresholds are tuned.
TUNING_CLIPS = (
    "debian/tree.avi",
    "debian/motion.mov",
    "psychopy/testMovie.mp4",
    "idtrackerai/test_A.avi",
)


def tune_threshold(
    readout: str,
    checkpoint: str,
    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6),
    root: str = "data/real",
    sequences: int = 4,
) -> dict[str, dict[float, dict[str, float]]]:
    """AJ/delta/OA per visibility threshold on v1/v2 sets of training-side clips (seed 1).

    One tracking run per sequence; a point is visible where the readout's score exceeds the
    threshold (``TrackerConfig.trained_threshold``). Never run on the evaluation clips.
    """
    model = _load(checkpoint)
    cfg = TrackerConfig(method="trained", readout=readout)
    out: dict[str, dict[float, dict[str, float]]] = {}
    for suite in ("v1", "v2"):
        if suite == "v1":
            bench = make_benchmark(SyntheticConfig(seed=1), root=root, clips=TUNING_CLIPS)
        else:
            bench = make_layered_benchmark(
                LayeredConfig(seed=1), root=root, clips=TUNING_CLIPS, max_sequences=sequences
            )
        rows: dict[float, list[dict]] = {t: [] for t in thresholds}
        for seq in bench:
            fn = ModelFeatures(model)
            feats = [fn(f) for f in seq.frames]
            q = seq.query_points
            tr, _, score = track_video(q, frames=seq.frames, features=feats, config=cfg)
            first = np.arange(tr.shape[1])[None] == np.round(q[:, :1]).astype(int)
            hw = seq.frames.shape[1:3]
            for t in thresholds:
                occ = (score <= t) & ~first
                rows[t].append(track_scores(q, seq.tracks, seq.occluded, tr, occ, hw))
        out[suite] = {
            t: {k: float(np.mean([r[k] for r in v])) for k in METRICS} for t, v in rows.items()
        }
    return out
