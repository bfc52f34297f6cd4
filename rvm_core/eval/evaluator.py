"""The synthetic benchmark as a library call: score readouts on feature sources, and classical
baselines, over sequences with exact ground truth (``rvm eval synthetic`` prints the result)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..readout.dis import propagate_flow
from ..readout.propagation import PropagationConfig, propagate_labels
from ..readout.tracker import IMAGE_ONLY, TrackerConfig, track_video
from .synthetic import SyntheticSequence, mask_scores, range_queries, track_scores

READOUTS = ("rvm", "hybrid")  # tracker methods that read features
TRACK_METRICS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
V2_GROUPS = ("background", "objects", "occluders", "reappearing")
# J&F column of each label upsampling mode (the DIS row's J&F is its own flow warping).
JF_COLUMN = {"bilinear": "JF_mean", "nearest": "JF_nearest", "guided": "JF_guided"}

Key = tuple[str, str]  # (method, feature source label)


@dataclass(frozen=True)
class SyntheticEvalConfig:
    """What ``evaluate_synthetic`` scores; every tracker method comes with its full config."""

    trackers: Mapping[str, TrackerConfig]  # method -> settings (rvm, hybrid, lk, dis)
    propagation: Mapping[str, PropagationConfig] = field(default_factory=dict)  # by upsampling
    flow_masks: bool = False  # the dis row's J&F: DIS flow warping of the first mask
    ranges: tuple[tuple[int, int], ...] = ()  # frame ranges [a, b) scored apart
    range_queries: bool = False  # ranges get fresh queries at their first frame
    stereo: bool = True  # the Middlebury stereo pair

    @property
    def readouts(self) -> list[str]:
        """The feature readouts among the tracker methods."""
        return [m for m in READOUTS if m in self.trackers]

    @property
    def image_only(self) -> list[str]:
        """The tracker methods that read no features."""
        return [m for m in IMAGE_ONLY if m in self.trackers]

    @property
    def needs_features(self) -> bool:
        """Whether any score reads a feature source."""
        return bool(self.readouts or self.propagation)


class _Scores:
    """Per-video scores by (method, source) and metric, and how one video's tracks are scored."""

    def __init__(self, config: SyntheticEvalConfig) -> None:
        self.config = config
        self.rows: dict[Key, dict[str, list[float]]] = {}

    def add(self, key: Key, metric: str, value: float) -> None:
        """Record one video's value of a metric."""
        self.rows.setdefault(key, {}).setdefault(metric, []).append(value)

    def tracks(
        self,
        key: Key,
        q: np.ndarray,
        gt: np.ndarray,
        gto: np.ndarray,
        tr: np.ndarray,
        occ: np.ndarray,
        hw: tuple[int, int],
        prefix: str = "",
    ) -> None:
        """TAP-Vid metrics of one video's tracks (and per range, unless queried afresh).

        q queries [N,3] (t, x, y); gt / tr tracks [N,T,2]; gto / occ occlusion [N,T].
        """
        m = track_scores(q, gt, gto, tr, occ, hw)
        for name in TRACK_METRICS:
            self.add(key, prefix + name, m[name])
        if prefix or self.config.range_queries:
            return
        for a, b in self.config.ranges:
            if b <= gt.shape[1]:
                self._range(key, track_scores(q, gt, gto, tr, occ, hw, frame_range=(a, b)), a, b)

    def _range(self, key: Key, m: dict[str, float], a: int, b: int) -> None:
        self.add(key, f"AJ[{a}:{b}]", m["average_jaccard"])
        self.add(key, f"delta[{a}:{b}]", m["average_pts_within_thresh"])

    def groups(
        self, key: Key, seq: SyntheticSequence, tr: np.ndarray, occ: np.ndarray, hw: tuple
    ) -> None:
        """v2: AJ of the tracks on the background, objects, occluders, and re-appearing ones."""
        from .layered import track_groups

        if seq.layer_of is None:
            return
        for group, sel in track_groups(seq).items():
            if sel.any():
                g = (seq.query_points[sel], seq.tracks[sel], seq.occluded[sel], tr[sel], occ[sel])
                self.add(key, f"AJ_{group}", track_scores(*g, hw)["average_jaccard"])

    def fresh_queries(
        self, key: Key, track: Callable, seq: SyntheticSequence, hw: tuple[int, int]
    ) -> None:
        """New queries at each range's first frame, each scored on its range."""
        gt, gto = seq.tracks, seq.occluded
        q, src, which = range_queries(gt, gto, self.config.ranges)
        tr, occ, _ = track(q)
        for i, (a, b) in enumerate(self.config.ranges):
            sel = which == i
            if b <= gt.shape[1] and sel.any():
                g, go = gt[src[sel]], gto[src[sel]]
                m = track_scores(q[sel], g, go, tr[sel], occ[sel], hw, frame_range=(a, b))
                self._range(key, m, a, b)

    def sequence(self, key: Key, seq: SyntheticSequence, track: Callable) -> None:
        """Every track score of one method on one sequence; ``track(queries)`` runs it."""
        hw = seq.frames.shape[1:3]
        tr, occ, _ = track(seq.query_points)
        self.tracks(key, seq.query_points, seq.tracks, seq.occluded, tr, occ, hw)
        self.groups(key, seq, tr, occ, hw)
        if self.config.ranges and self.config.range_queries:
            self.fresh_queries(key, track, seq, hw)


def _score_image_methods(scores: _Scores, seq: SyntheticSequence) -> None:
    """The trackers that need no features (Lucas-Kanade, DIS), and DIS mask warping."""
    cfg = scores.config
    for m in cfg.image_only:
        scores.sequence(
            (m, "none"), seq, partial(track_video, frames=seq.frames, config=cfg.trackers[m])
        )
    if cfg.flow_masks:
        pred = propagate_flow(seq.frames, seq.labels[0], cfg.trackers["dis"].dis)
        scores.add(("dis", "none"), "JF_mean", mask_scores(seq.labels, pred)["JF_mean"])


def _score_source(scores: _Scores, seq: SyntheticSequence, label: str, source: Any) -> None:
    """The feature readouts and label propagation on one source's features of one sequence."""
    cfg = scores.config
    feats = [source(f) for f in seq.frames]
    for r in cfg.readouts:
        track = partial(track_video, frames=seq.frames, features=feats, config=cfg.trackers[r])
        scores.sequence((r, label), seq, track)
    for upsample, pcfg in cfg.propagation.items():
        pred = propagate_labels(feats, seq.labels[0], pcfg, guides=seq.frames)
        scores.add(
            ("propagation", label), JF_COLUMN[upsample], mask_scores(seq.labels, pred)["JF_mean"]
        )


def stereo_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def _score_stereo(scores: _Scores, sources: Mapping[str, Callable[[], Any]]) -> None:
    """Every tracker on the stereo pair (columns ``stereo_*``)."""
    cfg = scores.config
    frames, q, gt, gto = stereo_case()
    hw = frames.shape[1:3]
    for m in cfg.image_only:
        tr, occ, _ = track_video(q, frames=frames, config=cfg.trackers[m])
        scores.tracks((m, "none"), q, gt, gto, tr, occ, hw, prefix="stereo_")
    for label, make in sources.items() if cfg.readouts else ():
        source = make()
        # Two views, not two time steps: each view is its own stream (a static clip after
        # the warm start), so the right view's features carry no state from the left one.
        feats = []
        for f in frames:
            source.reset()
            feats.append(source(f))
        for r in cfg.readouts:
            tr, occ, _ = track_video(q, frames=frames, features=feats, config=cfg.trackers[r])
            scores.tracks((r, label), q, gt, gto, tr, occ, hw, prefix="stereo_")


def evaluate_synthetic(
    sequences: Iterable[SyntheticSequence],
    sources: Mapping[str, Callable[[], Any]],
    config: SyntheticEvalConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every method and source -> {"videos": names, "rows": per-video means by row}.

    ``sources`` maps a row label to a factory of a fresh feature source (one per sequence).
    """
    scores = _Scores(config)
    videos = []
    t_start = time.perf_counter()
    for seq in sequences:
        videos.append(seq.name)
        _score_image_methods(scores, seq)
        for label, make in sources.items():
            _score_source(scores, seq, label, make())
        if progress:
            progress(f"  {seq.name}: done ({time.perf_counter() - t_start:.0f} s)")
    if config.stereo:
        _score_stereo(scores, sources)
    return {"videos": videos, "rows": synthetic_table(scores.rows, list(sources), config.readouts)}


def synthetic_table(
    rows: Mapping[Key, dict], labels: Sequence[str], readouts: Sequence[str]
) -> list[dict]:
    """Per-video means -> table rows; propagation J&F is shown on every row using its features."""
    table = []
    for (method, label), metrics in rows.items():
        if method == "propagation":
            continue
        row: dict[str, Any] = {"method": method, "features": label}
        row.update({k: float(np.mean(v)) for k, v in metrics.items()})
        prop = rows.get(("propagation", label), {})
        for col in JF_COLUMN.values():
            if col in prop:
                row[col] = float(np.mean(prop[col]))
        row.setdefault("JF_mean", None)
        table.append(row)
    for label in labels:  # propagation-only rows when no readout was requested
        if not readouts and ("propagation", label) in rows:
            row = {"method": "propagation", "features": label}
            row.update({k: float(np.mean(v)) for k, v in rows[("propagation", label)].items()})
            table.append(row)
    return table


def synthetic_columns(config: SyntheticEvalConfig, suite: str) -> list[str]:
    """The metric columns a table of ``evaluate_synthetic`` rows shows, in order."""
    jf = [JF_COLUMN[u] for u in config.propagation] or ["JF_mean"]
    cols = [*TRACK_METRICS, *jf]
    if config.stereo:
        cols += ["stereo_average_jaccard", "stereo_average_pts_within_thresh"]
    if suite == "v2":
        cols += [f"AJ_{g}" for g in V2_GROUPS]
    ranges = config.ranges
    return cols + [f"AJ[{a}:{b}]" for a, b in ranges] + [f"delta[{a}:{b}]" for a, b in ranges]
