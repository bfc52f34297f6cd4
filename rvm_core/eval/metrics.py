"""Benchmark metrics: TAP-Vid point tracking and DAVIS-2017 J&F (numpy only, no torch).

Both reproduce the official evaluation code to floating-point round-off:
- TAP-Vid: google-deepmind/tapnet, ``tapnet/tapvid/evaluation_datasets.py::compute_tapvid_metrics``.
- DAVIS: davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py`` (``db_eval_iou``,
  ``db_eval_boundary``, ``f_measure``, ``_seg2bmap``), ``davis2017/utils.py::db_statistics`` and the
  semi-supervised flow of ``davis2017/evaluation.py::DAVISEvaluation.evaluate``.
``test/test_metrics.py`` checks agreement against outputs of the official code stored in
``test/data/metrics_reference.npz``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DAVIS_VOID_LABEL",
    "TAPVID_RESOLUTION",
    "TAPVID_THRESHOLDS",
    "davis_aggregate",
    "davis_f",
    "davis_j",
    "davis_statistics",
    "davis_summary",
    "rescale_points",
    "seg2bmap",
    "tapvid_mean",
    "tapvid_metrics",
    "tapvid_video_metrics",
]

TAPVID_THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)  # pixels, in 256x256 space
TAPVID_RESOLUTION: tuple[int, int] = (256, 256)  # (height, width) the thresholds refer to
DAVIS_VOID_LABEL = 255
_F_CHUNK = 16  # frames per davis_f chunk


# --------------------------------------------------------------------------------------------
# TAP-Vid
# --------------------------------------------------------------------------------------------


def _as_bool(x: np.ndarray, name: str) -> np.ndarray:
    """Occlusion flags as bool; refuses float scores (thresholding them is the caller's choice)."""
    x = np.asarray(x)
    if x.dtype != np.bool_ and not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be bool or integer 0/1, got {x.dtype}; threshold it first")
    return x.astype(bool)


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
    per_track: bool = False,
) -> dict[str, np.ndarray]:
    """TAP-Vid metrics per video: query [b,n,3] (t,y,x), occ [b,n,T] bool, tracks [b,n,T,2] (x,y).

    Coordinates must already be in 256x256 space (see ``rescale_points``): thresholds are pixels
    of a 256x256 frame. ``query_mode`` 'first' scores only frames strictly after the query frame
    (the points before it are known occluded by construction); 'strided' scores every frame but
    the query frame. Returns arrays of shape [b] (or [b,n] if ``per_track``) for keys
    ``occlusion_accuracy``, ``pts_within_{d}``, ``jaccard_{d}`` (d in 1,2,4,8,16),
    ``average_jaccard`` and ``average_pts_within_thresh``; a video with nothing to score is NaN.
    Benchmark numbers are the mean over videos (``tapvid_mean``).
    """
    query_points = np.asarray(query_points)
    gt_tracks = np.asarray(gt_tracks)
    pred_tracks = np.asarray(pred_tracks)
    gt_occ = _as_bool(gt_occluded, "gt_occluded")
    pred_occ = _as_bool(pred_occluded, "pred_occluded")
    b, n, t = gt_occ.shape
    if query_points.shape != (b, n, 3) or gt_tracks.shape != (b, n, t, 2):
        raise ValueError(
            f"shape mismatch: query_points {query_points.shape}, gt_occluded {gt_occ.shape}, "
            f"gt_tracks {gt_tracks.shape}"
        )
    if pred_occ.shape != gt_occ.shape or pred_tracks.shape != gt_tracks.shape:
        raise ValueError(f"pred shapes {pred_occ.shape}, {pred_tracks.shape} differ from gt")

    # np.round rounds half to even (2.5 -> 2), as the official code does.
    query_frame = np.round(query_points[..., 0]).astype(np.int64)
    if query_frame.size and (query_frame.min() < 0 or query_frame.max() >= t):
        # The official code would silently wrap negative indices; refuse instead.
        raise ValueError(f"query frame outside [0, {t})")
    frames = np.arange(t)
    if query_mode == "first":
        evaluated = frames > query_frame[..., None]  # frames after the query, query excluded
    elif query_mode == "strided":
        evaluated = frames != query_frame[..., None]
    else:
        raise ValueError(f"Unknown query mode {query_mode}")

    axes = (2,) if per_track else (1, 2)
    metrics: dict[str, np.ndarray] = {}
    # Nothing to score gives 0/0 = NaN (documented, as the official code); no warning spam.
    with np.errstate(invalid="ignore", divide="ignore"):
        _tapvid_scores(metrics, evaluated, gt_occ, pred_occ, gt_tracks, pred_tracks, axes)
    return metrics


def _tapvid_scores(
    metrics: dict[str, np.ndarray],
    evaluated: np.ndarray,
    gt_occ: np.ndarray,
    pred_occ: np.ndarray,
    gt_tracks: np.ndarray,
    pred_tracks: np.ndarray,
    axes: tuple[int, ...],
) -> None:
    """Fill ``metrics`` in place; inputs as ``tapvid_metrics`` after validation."""
    # Occlusion accuracy counts every evaluated frame, visible or not.
    metrics["occlusion_accuracy"] = np.sum((pred_occ == gt_occ) & evaluated, axis=axes) / np.sum(
        evaluated, axis=axes
    )

    gt_vis = ~gt_occ
    pred_vis = ~pred_occ
    sq_err = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)  # [b,n,T], squared pixels
    n_gt_vis = np.sum(gt_vis & evaluated, axis=axes)
    all_within, all_jaccard = [], []
    for d in TAPVID_THRESHOLDS:
        within = sq_err < np.square(d)  # strict: an error of exactly d pixels is a miss
        hit = within & gt_vis
        # Position accuracy ignores the predicted visibility flag.
        frac_within = np.sum(hit & evaluated, axis=axes) / n_gt_vis
        true_pos = np.sum(hit & pred_vis & evaluated, axis=axes)
        # FP: predicted visible where gt is occluded (even if within d) or the error is >= d.
        false_pos = np.sum(pred_vis & (gt_occ | ~within) & evaluated, axis=axes)
        # TP + FN == gt-visible count, so the Jaccard denominator is gt-visible + FP.
        jaccard = true_pos / (n_gt_vis + false_pos)
        metrics[f"pts_within_{d}"] = frac_within
        metrics[f"jaccard_{d}"] = jaccard
        all_within.append(frac_within)
        all_jaccard.append(jaccard)
    metrics["average_jaccard"] = np.mean(np.stack(all_jaccard, axis=1), axis=1)
    metrics["average_pts_within_thresh"] = np.mean(np.stack(all_within, axis=1), axis=1)


def tapvid_mean(per_video: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]) -> dict:
    """Benchmark score: mean over all videos of ``tapvid_metrics`` outputs (one dict or several)."""
    dicts = [per_video] if isinstance(per_video, Mapping) else list(per_video)
    keys = dicts[0].keys()
    return {k: float(np.mean(np.concatenate([np.ravel(d[k]) for d in dicts]))) for k in keys}


def rescale_points(
    points: np.ndarray,
    image_hw: tuple[int, int],
    out_hw: tuple[int, int] = TAPVID_RESOLUTION,
    fmt: str = "xy",
) -> np.ndarray:
    """Rescale pixel coordinates [..., 2] (x,y) or [..., 3] (t,y,x) from image_hw to out_hw.

    Pure scaling ``x * W_out / W_in`` (no half-pixel shift), which is how TAP-Vid maps its
    normalised [0,1] annotations to 256x256 (tapnet ``convert_grid_coordinates`` does the same).
    """
    points = np.asarray(points, dtype=np.float64)
    (h_in, w_in), (h_out, w_out) = image_hw, out_hw
    if fmt == "xy":
        scale = np.array([w_out / w_in, h_out / h_in])
    elif fmt == "tyx":
        scale = np.array([1.0, h_out / h_in, w_out / w_in])  # time is not rescaled
    else:
        raise ValueError(f"fmt must be 'xy' or 'tyx', got {fmt}")
    if points.shape[-1] != scale.shape[0]:
        raise ValueError(f"fmt {fmt} needs a last axis of {scale.shape[0]}, got {points.shape}")
    return points * scale


def tapvid_video_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    image_hw: tuple[int, int],
    query_mode: str = "first",
) -> dict[str, np.ndarray]:
    """``tapvid_metrics`` of one video in image pixels: query [n,3] (t,y,x), tracks [n,T,2] (x,y).

    Rescales the points from ``image_hw`` to 256x256 and adds the batch axis; returns arrays of
    shape [1], ready for ``tapvid_mean``.
    """
    return tapvid_metrics(
        rescale_points(query_points, image_hw, fmt="tyx")[None],
        np.asarray(gt_occluded)[None],
        rescale_points(gt_tracks, image_hw)[None],
        np.asarray(pred_occluded)[None],
        rescale_points(pred_tracks, image_hw)[None],
        query_mode=query_mode,
    )


# --------------------------------------------------------------------------------------------
# DAVIS J & F
# --------------------------------------------------------------------------------------------


def davis_j(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J (IoU) per frame: masks [..., H, W] bool → [...]; 1 where both empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, dtype=bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    # Both empty counts as a perfect prediction (official: np.isclose(union, 0) -> 1).
    return np.where(union == 0, 1.0, j)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map of binary masks [..., H, W] → bool [..., H, W] (DAVIS ``_seg2bmap``).

    A pixel is boundary if it differs from its east, south or south-east neighbour, i.e. the
    boundary sits half a pixel towards the origin. The last row only compares east, the last
    column only south, and the bottom-right pixel is never boundary: the image border itself
    is not a boundary, so a mask filling the frame has (almost) none.
    """
    seg = np.asarray(seg, dtype=bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _disk(radius: float) -> np.ndarray:
    """Disk footprint as skimage.morphology.disk(radius) (strict radius) → bool [k, k]."""
    axis = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(axis, axis)
    return (xx**2 + yy**2) <= radius**2


def _shift_rows(src: np.ndarray, dst: np.ndarray, dy: int) -> None:
    """dst[..., y, :] |= src[..., y + dy, :] where y + dy is inside the image (else 0)."""
    h = src.shape[-2]
    if dy >= h or -dy >= h:
        return
    if dy >= 0:
        dst[..., : h - dy, :] |= src[..., dy:, :]
    else:
        dst[..., -dy:, :] |= src[..., : h + dy, :]


def _dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation of [..., H, W] as cv2.dilate (centre anchor k//2, outside = 0) → bool.

    cv2 computes dst(y, x) = max over footprint offsets of src(y + dy, x + dx), with offsets
    relative to the anchor (k//2, k//2) and pixels outside the image ignored.
    """
    kh, kw = footprint.shape
    ay, ax = kh // 2, kw // 2
    runs: dict[tuple[int, int], list[int]] = {}  # column run (lo, hi) -> row offsets dy
    for i in range(kh):
        on = np.flatnonzero(footprint[i])
        if on.size == 0:
            continue
        if on.size != on[-1] - on[0] + 1:
            raise ValueError("footprint rows must be contiguous runs")
        runs.setdefault((int(on[0]) - ax, int(on[-1]) - ax), []).append(i - ay)
    out = np.zeros(mask.shape, dtype=bool)
    w = mask.shape[-1]
    # Disk rows of an odd footprint are symmetric runs [-a, a]: grow one horizontal dilation
    # a = 0, 1, ... by shifted ORs and emit it into every row offset of that half-width.
    symmetric = {lo_hi[1]: dys for lo_hi, dys in runs.items() if lo_hi[0] == -lo_hi[1]}
    if symmetric:
        grown = mask.copy()
        for a in range(max(symmetric) + 1):
            if 0 < a < w:
                grown[..., :, : w - a] |= mask[..., :, a:]
                grown[..., :, a:] |= mask[..., :, : w - a]
            for dy in symmetric.get(a, []):
                _shift_rows(grown, out, dy)
    # Other runs (even-sized footprints from a non-integer pixel radius): window-any through a
    # cumulative sum along x.
    others = {k: v for k, v in runs.items() if k[0] != -k[1]}
    if others:
        csum = np.zeros((*mask.shape[:-1], w + 1), dtype=np.int32)
        np.cumsum(mask, axis=-1, out=csum[..., 1:])
        cols = np.arange(w)
        for (lo, hi), dys in others.items():
            start, stop = np.clip(cols + lo, 0, w), np.clip(cols + hi + 1, 0, w)
            row_any = (csum[..., stop] - csum[..., start]) > 0
            for dy in dys:
                _shift_rows(row_any, out, dy)
    return out


def davis_f(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None
) -> np.ndarray:
    """Boundary F-measure per frame: masks [..., H, W] bool → [...] (DAVIS ``db_eval_boundary``).

    Boundaries (``seg2bmap``) are matched within a disk of radius ``bound_th`` pixels if
    ``bound_th >= 1``, else ``ceil(bound_th * sqrt(H^2 + W^2))`` (0.008 → 8 px at 480x854).
    Special cases: both boundaries empty → 1; exactly one empty → 0.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ")
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        gt, pred = gt & keep, pred & keep
    h, w = gt.shape[-2:]
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    footprint = _disk(radius)
    lead = gt.shape[:-2]
    gt, pred = gt.reshape(-1, h, w), pred.reshape(-1, h, w)
    counts = np.zeros((4, gt.shape[0]), dtype=np.int64)  # n_pred, n_gt, pred_hit, gt_hit
    for s in range(0, gt.shape[0], _F_CHUNK):  # frames in chunks: bounded temporaries
        pred_b, gt_b = seg2bmap(pred[s : s + _F_CHUNK]), seg2bmap(gt[s : s + _F_CHUNK])
        counts[0, s : s + _F_CHUNK] = np.sum(pred_b, axis=(-2, -1))
        counts[1, s : s + _F_CHUNK] = np.sum(gt_b, axis=(-2, -1))
        counts[2, s : s + _F_CHUNK] = np.sum(pred_b & _dilate(gt_b, footprint), axis=(-2, -1))
        counts[3, s : s + _F_CHUNK] = np.sum(gt_b & _dilate(pred_b, footprint), axis=(-2, -1))
    n_pred, n_gt, pred_hit, gt_hit = counts.reshape(4, *lead)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = pred_hit / n_pred.astype(np.float64)
        recall = gt_hit / n_gt.astype(np.float64)
    # Official special cases: an empty boundary scores precision 1 (nothing wrong predicted)
    # and recall 0 against a non-empty one; both empty scores P = R = 1.
    precision = np.where(n_pred == 0, 1.0, np.where(n_gt == 0, 0.0, precision))
    recall = np.where(n_gt == 0, 1.0, np.where(n_pred == 0, 0.0, recall))
    denom = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * precision * recall / denom
    return np.where(denom == 0, 0.0, f)


def davis_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame scores [T'] (DAVIS ``db_statistics``).

    recall = fraction of frames scoring > 0.5 (strict); decay = mean of the first quarter minus
    mean of the last quarter, the quarters being the official overlapping index bins.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN input gives NaN
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
    # Official casts these ids to uint8, which wraps beyond 256 frames; int64 is identical below.
    ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay


def davis_summary(gt_labels: np.ndarray, pred_labels: np.ndarray, bound_th: float = 0.008) -> dict:
    """Semi-supervised DAVIS-2017 scores of one sequence: label maps [T, H, W] int → dict.

    As ``DAVISEvaluation.evaluate(task='semi-supervised')``: objects are ids 1..max(gt[0])
    (objects first labelled later are ignored); void (255) in gt counts as background (the
    toolkit passes no void mask in this task); only frames 1..T-2 are scored (the first, given
    frame and the last frame are dropped); a prediction with an id above the gt object count is
    an error, missing ids score as empty masks. Returns floats ``J_mean``, ``J_recall``,
    ``J_decay``, ``F_*`` and ``JF_mean`` = (J_mean + F_mean) / 2, averaged over the objects;
    ``per_object`` with the same six keys as [n_obj] arrays; ``J_per_frame`` / ``F_per_frame``
    [n_obj, T-2]. The dataset J&F averages over all objects of all sequences, not over sequences:
    use ``davis_aggregate``.
    """
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape or gt_labels.ndim != 3:
        raise ValueError(f"need equal [T,H,W] shapes, got {gt_labels.shape}, {pred_labels.shape}")
    if gt_labels.shape[0] < 3:
        raise ValueError("DAVIS scores frames 1..T-2, so T must be >= 3")
    # Void never equals an object id, so it only matters for the object count of frame 0.
    n_obj = int(np.max(gt_labels[0][gt_labels[0] != DAVIS_VOID_LABEL], initial=0))
    gt, pred = gt_labels[1:-1], pred_labels[1:-1]
    if int(np.max(pred)) > n_obj:
        raise ValueError(f"prediction has id {int(np.max(pred))} > {n_obj} gt objects")
    j = np.zeros((n_obj, gt.shape[0]))
    f = np.zeros((n_obj, gt.shape[0]))
    for k in range(n_obj):  # one object at a time keeps memory at one [T-2, H, W] mask pair
        j[k] = davis_j(gt == k + 1, pred == k + 1)
        f[k] = davis_f(gt == k + 1, pred == k + 1, bound_th=bound_th)
    stats = {
        name: np.array([davis_statistics(x) for x in per_frame]).reshape(n_obj, 3)
        for name, per_frame in (("J", j), ("F", f))
    }
    per_object = {
        f"{name}_{stat}": stats[name][:, i]
        for name in ("J", "F")
        for i, stat in enumerate(("mean", "recall", "decay"))
    }
    return {
        **_davis_scalars(per_object),
        "per_object": per_object,
        "J_per_frame": j,
        "F_per_frame": f,
    }


_DAVIS_KEYS = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")


def _davis_scalars(per_object: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Object averages and J&F = (mean J + mean F) / 2, as evaluation_method.py reports them."""
    out = {k: float(np.mean(per_object[k])) for k in _DAVIS_KEYS}
    out["JF_mean"] = (out["J_mean"] + out["F_mean"]) / 2.0
    return out


def davis_aggregate(summaries: Sequence[Mapping]) -> dict[str, float]:
    """Dataset-level DAVIS numbers from ``davis_summary`` outputs: every object weighs equally."""
    return _davis_scalars(
        {k: np.concatenate([s["per_object"][k] for s in summaries]) for k in _DAVIS_KEYS}
    )
