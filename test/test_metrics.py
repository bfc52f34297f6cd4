"""Tests of rvm_core.eval.metrics against the official TAP-Vid and DAVIS-2017 evaluation code.

Fixture ``test/data/metrics_reference.npz`` (plain arrays, ``allow_pickle=False``) holds random
inputs, seeded with ``numpy.random.default_rng(20260722)``, and the outputs the OFFICIAL code
gave on them:
- ``tap{i}_*``: ``compute_tapvid_metrics`` from google-deepmind/tapnet
  ``tapnet/tapvid/evaluation_datasets.py`` (repo commit c2cbab81cc06092b5f05bfe2da7bfec54e2079c9;
  the function was extracted with ``ast`` and run unmodified, since the module imports
  TensorFlow). Cases: both query modes, query at the last frame, fully occluded videos,
  errors exactly at the thresholds, half-integer query times, float32, trackwise metrics.
- ``fj{i}_*``: ``db_eval_iou`` / ``db_eval_boundary`` from davisvideochallenge/davis2017-evaluation
  ``davis2017/metrics.py`` (commit ac7c43fca936f9722837b7fbd337d284ba37004b, run unmodified with
  opencv 5.0 and scikit-image 0.26), on random blobs, non-square frames, bound_th 0.008 / 0.05 /
  3 / 1.5, empty / full / single-pixel masks and void pixels.
- ``seq{i}_*``, ``seq_*``: the full semi-supervised toolkit, ``DAVISEvaluation.evaluate`` of
  ``davis2017/evaluation.py`` at the same commit, run on the label maps written as DAVIS-layout
  PNGs (void 255 in gt, objects first appearing after frame 0, missing predicted ids, T = 3).
The generating script (/work/refs/make_metrics_fixture.py) and the official sources it ran are
kept outside the repository.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rvm_core.eval.metrics import (
    TAPVID_THRESHOLDS,
    davis_aggregate,
    davis_f,
    davis_j,
    davis_statistics,
    davis_summary,
    rescale_points,
    seg2bmap,
    tapvid_mean,
    tapvid_metrics,
)

FIXTURE = Path(__file__).parent / "data" / "metrics_reference.npz"
TAP_KEYS = (
    ["occlusion_accuracy", "average_jaccard", "average_pts_within_thresh"]
    + [f"pts_within_{d}" for d in TAPVID_THRESHOLDS]
    + [f"jaccard_{d}" for d in TAPVID_THRESHOLDS]
)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    """The official-code reference fixture, as plain arrays."""
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Agreement to 1e-9 absolute, NaN where the official code gives NaN."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9, equal_nan=True)


# -------------------------------------------------------------------------- official fixture


def test_fixture_is_small_and_plain() -> None:
    assert FIXTURE.stat().st_size < 500_000


def test_tapvid_matches_official(ref: dict[str, np.ndarray]) -> None:
    for i in range(int(ref["tap_num_cases"])):
        p = f"tap{i}_"
        out = tapvid_metrics(
            ref[p + "query_points"],
            ref[p + "gt_occluded"],
            ref[p + "gt_tracks"],
            ref[p + "pred_occluded"],
            ref[p + "pred_tracks"],
            str(ref[p + "query_mode"]),
            per_track=bool(ref[p + "per_track"]),
        )
        for k in TAP_KEYS:
            assert out[k].shape == ref[p + "out_" + k].shape, (i, k)
            assert_close(out[k], ref[p + "out_" + k])


def test_davis_frame_metrics_match_official(ref: dict[str, np.ndarray]) -> None:
    for i in range(int(ref["fj_num_cases"])):
        p = f"fj{i}_"
        void = ref[p + "void"] if bool(ref[p + "has_void"]) else None
        gt, pred, bound_th = ref[p + "gt"], ref[p + "pred"], float(ref[p + "bound_th"])
        assert_close(davis_j(gt, pred, void=void), ref[p + "J"])
        assert_close(davis_f(gt, pred, bound_th=bound_th, void=void), ref[p + "F"])


def test_davis_toolkit_matches_official(ref: dict[str, np.ndarray]) -> None:
    summaries = [
        davis_summary(ref[f"seq{s}_gt"], ref[f"seq{s}_pred"]) for s in range(int(ref["seq_num"]))
    ]
    assert [len(s["per_object"]["J_mean"]) for s in summaries] == list(ref["seq_num_objects"])
    for m in ("J", "F"):
        for stat, name in (("M", "mean"), ("R", "recall"), ("D", "decay")):
            ours = np.concatenate([s["per_object"][f"{m}_{name}"] for s in summaries])
            assert_close(ours, ref[f"seq_{m}{stat}"])
    assert_close(davis_aggregate(summaries)["JF_mean"], ref["seq_JF_mean"])


# -------------------------------------------------------------------------- TAP-Vid by hand


def _one_track(
    errors: list[float], pred_occ: list[bool], gt_occ: list[bool] | None = None, qt: float = 0
) -> tuple[np.ndarray, ...]:
    """One video, one track at (x,y) = (100,50); predictions offset by `errors` pixels in x."""
    t = len(errors)
    gt_tracks = np.tile(np.array([100.0, 50.0]), (1, 1, t, 1))
    pred_tracks = gt_tracks.copy()
    pred_tracks[..., 0] += np.array(errors)
    gt_occ_arr = np.array(gt_occ if gt_occ is not None else [False] * t)[None, None]
    query = np.array([[[qt, 50.0, 100.0]]])
    return query, gt_occ_arr, gt_tracks, np.array(pred_occ)[None, None], pred_tracks


def test_tapvid_first_mode_by_hand() -> None:
    # Frame 0 is the query (not scored). Frame 1: err 0.5; frame 2: err 3; frame 3: err 0 but
    # predicted occluded (a miss for Jaccard, still a hit for pts_within).
    m = tapvid_metrics(*_one_track([9.0, 0.5, 3.0, 0.0], [True, False, False, True]), "first")
    assert_close(m["occlusion_accuracy"], [2 / 3])
    assert_close(m["pts_within_1"], [2 / 3])
    assert_close(m["pts_within_2"], [2 / 3])
    assert_close(m["pts_within_4"], [1.0])
    # d=1,2: TP = frame 1; FP = frame 2 (visible but too far); gt-visible = 3 -> 1/4.
    assert_close(m["jaccard_1"], [1 / 4])
    assert_close(m["jaccard_2"], [1 / 4])
    # d>=4: TP = frames 1,2; FP = 0 -> 2/3.
    for d in (4, 8, 16):
        assert_close(m[f"jaccard_{d}"], [2 / 3])
    assert_close(m["average_jaccard"], [(1 / 4 + 1 / 4 + 3 * 2 / 3) / 5])
    assert_close(m["average_pts_within_thresh"], [(2 / 3 + 2 / 3 + 3) / 5])


def test_tapvid_strided_scores_frames_before_query() -> None:
    # Query at frame 2: strided scores frames 0, 1, 3; 'first' would score only frame 3.
    args = _one_track([0.0, 20.0, 0.0, 20.0], [False] * 4, qt=2)
    strided = tapvid_metrics(*args, "strided")
    first = tapvid_metrics(*args, "first")
    assert_close(strided["pts_within_16"], [1 / 3])
    assert_close(strided["jaccard_16"], [1 / 5])  # TP 1 / (3 visible + 2 FP)
    assert_close(first["pts_within_16"], [0.0])
    assert_close(first["jaccard_16"], [0.0])


def test_tapvid_threshold_is_strict() -> None:
    # An error of exactly d pixels does not count as within d (official: err^2 < d^2).
    m = tapvid_metrics(*_one_track([0.0, 1.0, 2.0, 4.0], [False] * 4), "first")
    assert_close(m["pts_within_1"], [0.0])
    assert_close(m["pts_within_2"], [1 / 3])
    assert_close(m["pts_within_4"], [2 / 3])
    assert_close(m["pts_within_8"], [1.0])


def test_tapvid_query_at_last_frame_first_mode_is_nan() -> None:
    # Nothing after the query frame: 0/0 for every metric (NaN, as the official code).
    with np.errstate(invalid="ignore"):
        m = tapvid_metrics(*_one_track([0.0, 0.0, 0.0], [False] * 3, qt=2), "first")
    for k in TAP_KEYS:
        assert np.isnan(m[k]).all(), k


def test_tapvid_all_occluded() -> None:
    # gt occluded after the query: pts_within is 0/0; Jaccard is 0 as soon as one FP exists.
    args = _one_track([0.0] * 4, [False, True, False, True], gt_occ=[False, True, True, True])
    with np.errstate(invalid="ignore"):
        m = tapvid_metrics(*args, "first")
    assert np.isnan(m["pts_within_1"]).all()
    assert_close(m["jaccard_1"], [0.0])
    assert_close(m["occlusion_accuracy"], [2 / 3])
    # ...and NaN when the prediction is (correctly) occluded everywhere too.
    args = _one_track([0.0] * 4, [False] + [True] * 3, gt_occ=[False, True, True, True])
    with np.errstate(invalid="ignore"):
        m = tapvid_metrics(*args, "first")
    assert np.isnan(m["jaccard_1"]).all()
    assert_close(m["occlusion_accuracy"], [1.0])


def test_tapvid_query_rounding_and_validation() -> None:
    args = list(_one_track([0.0, 20.0, 20.0, 20.0], [False] * 4))
    args[0] = args[0].copy()
    args[0][..., 0] = 0.5  # rounds half-to-even to frame 0: frames 1..3 scored
    assert_close(tapvid_metrics(*args, "first")["pts_within_16"], [0.0])
    args[0][..., 0] = 4.0
    with pytest.raises(ValueError):
        tapvid_metrics(*args, "first")
    with pytest.raises(ValueError):
        tapvid_metrics(*_one_track([0.0, 0.0], [False] * 2), "causal")
    with pytest.raises(TypeError):
        q, go, gt, po, pt = _one_track([0.0, 0.0], [False] * 2)
        tapvid_metrics(q, go, gt, po.astype(np.float32) * 0.7, pt, "first")


def test_tapvid_mean_and_rescale() -> None:
    a = {"average_jaccard": np.array([0.2, 0.4])}
    b = {"average_jaccard": np.array([0.9])}
    assert tapvid_mean([a, b])["average_jaccard"] == pytest.approx(0.5)
    xy = rescale_points(np.array([[427.0, 240.0], [854.0, 0.0]]), image_hw=(480, 854))
    assert_close(xy, [[128.0, 128.0], [256.0, 0.0]])
    tyx = rescale_points(np.array([7.0, 240.0, 427.0]), image_hw=(480, 854), fmt="tyx")
    assert_close(tyx, [7.0, 128.0, 128.0])


# -------------------------------------------------------------------------- DAVIS by hand


def _square(h: int, w: int, y0: int, x0: int, size: int = 2) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def test_davis_j_by_hand() -> None:
    gt = np.stack([_square(4, 4, 0, 0), np.zeros((4, 4), bool), np.zeros((4, 4), bool)])
    pred = np.stack([_square(4, 4, 0, 1), np.zeros((4, 4), bool), _square(4, 4, 1, 1)])
    assert_close(davis_j(gt, pred), [2 / 6, 1.0, 0.0])  # overlap 2 of 6; both empty = 1


def test_seg2bmap_by_hand() -> None:
    # The boundary sits half a pixel towards the origin: a ring around (1,1), not at (3, *).
    bmap = seg2bmap(_square(5, 5, 1, 1))
    expected = np.zeros((5, 5), bool)
    for y, x in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]:
        expected[y, x] = True
    np.testing.assert_array_equal(bmap, expected)
    # A full frame only has boundary where the toolkit compares rows/cols with the zero pad.
    full = seg2bmap(np.ones((3, 4), bool))
    assert not full[:-1, :-1].any() and not full[-1, -1]


def test_davis_f_by_hand() -> None:
    gt = _square(6, 6, 1, 1)
    pred = _square(6, 6, 1, 3)
    # Radius 1 px (cross footprint): 5 of the 8 boundary pixels match on each side -> F = 5/8.
    assert_close(davis_f(gt[None], pred[None], bound_th=1), [5 / 8])
    assert_close(davis_f(gt[None], gt[None]), [1.0])
    empty = np.zeros((1, 6, 6), bool)
    assert_close(davis_f(empty, empty), [1.0])  # both empty
    assert_close(davis_f(empty, gt[None]), [0.0])  # one empty
    assert_close(davis_f(gt[None], empty), [0.0])
    assert_close(davis_f(_square(20, 20, 0, 0)[None], _square(20, 20, 15, 15)[None]), [0.0])


def test_davis_statistics_by_hand() -> None:
    mean, recall, decay = davis_statistics(np.array([1.0, 0.8, 0.5, 0.2, 0.0]))
    # bins: ids round(linspace(1,5,5))-1 = [0,1,2,3,4] -> first [1.0, 0.8], last [0.2, 0.0].
    assert (mean, recall) == pytest.approx((0.5, 0.4))
    assert decay == pytest.approx(0.9 - 0.1)


def test_davis_summary_excludes_first_and_last_frame() -> None:
    t, h, w = 4, 16, 16
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 4:10, 4:10] = 1
    pred = gt.copy()
    pred[0] = 0  # the given first frame is never scored
    pred[2] = 0  # scored frame 2 missed
    pred[3, 0:3, 0:3] = 1  # the last frame is never scored either
    s = davis_summary(gt, pred)
    assert s["J_per_frame"].shape == (1, 2)
    assert_close(s["J_per_frame"], [[1.0, 0.0]])
    assert_close(s["F_per_frame"], [[1.0, 0.0]])
    assert (s["J_mean"], s["J_recall"], s["J_decay"]) == pytest.approx((0.5, 0.5, 1.0))
    assert s["JF_mean"] == pytest.approx(0.5)


def test_davis_summary_objects_void_and_errors() -> None:
    t, h, w = 5, 20, 20
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 12:18, 12:18] = 2
    gt[:, 0, :] = 255  # void: background for the semi-supervised toolkit
    gt[2:, 9:11, 0:3] = 3  # first labelled after frame 0: not an object
    pred = np.where(gt == 255, 0, gt)
    pred[pred == 3] = 0
    s = davis_summary(gt, pred)
    assert_close(s["per_object"]["J_mean"], [1.0, 1.0])
    pred_void = pred.copy()
    pred_void[:, 0, :] = 1  # predicting object 1 on void pixels is penalised
    assert davis_summary(gt, pred_void)["per_object"]["J_mean"][0] < 1.0
    pred_missing = pred.copy()
    pred_missing[pred_missing == 2] = 0  # missing id 2 scores as an empty mask
    assert_close(davis_summary(gt, pred_missing)["per_object"]["J_mean"], [1.0, 0.0])
    pred_extra = pred.copy()
    pred_extra[2, 0:2, 0:2] = 3
    with pytest.raises(ValueError):
        davis_summary(gt, pred_extra)


def test_davis_aggregate_weights_objects_not_sequences() -> None:
    t, h, w = 3, 12, 12
    one = np.zeros((t, h, w), np.uint8)
    one[:, 2:6, 2:6] = 1
    two = one.copy()
    two[:, 7:11, 7:11] = 2
    good = davis_summary(one, one)  # 1 object, perfect
    bad = davis_summary(two, np.zeros_like(two))  # 2 objects, both missed
    agg = davis_aggregate([good, bad])
    assert agg["J_mean"] == pytest.approx(1 / 3)  # not (1 + 0) / 2
    assert agg["JF_mean"] == pytest.approx(1 / 3)


# -------------------------------------------------------------------------- deployment


def test_metrics_module_does_not_import_torch() -> None:
    path = Path(__file__).parents[1] / "rvm_core" / "eval" / "metrics.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert importlib.util.find_spec("numpy") is not None
