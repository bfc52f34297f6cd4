"""Synthetic benchmark ground truth, dataset readers and the track/propagate/eval commands."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from rvm_core.cli import main
from rvm_core.eval.datasets import read_davis, read_label_png, read_tapvid, tapvid_queries
from rvm_core.eval.layered import LayeredConfig, make_layered_sequence, track_groups
from rvm_core.eval.synthetic import SyntheticConfig, make_sequence, range_queries, track_scores

SMALL = SyntheticConfig(num_frames=10, image_hw=(96, 128), grid=4, seed=3)


@pytest.fixture(scope="module")
def seq():
    return make_sequence(data.astronaut(), [data.coffee(), data.chelsea()], SMALL)


def test_deterministic(seq) -> None:
    again = make_sequence(data.astronaut(), [data.coffee(), data.chelsea()], SMALL)
    np.testing.assert_array_equal(seq.frames, again.frames)
    np.testing.assert_array_equal(seq.tracks, again.tracks)
    np.testing.assert_array_equal(seq.labels, again.labels)
    other = make_sequence(data.astronaut(), [data.coffee()], SMALL, seed=4)
    assert not np.array_equal(seq.tracks, other.tracks)


def test_ground_truth_follows_the_warp(seq) -> None:
    w = seq.warp
    for t in range(SMALL.num_frames):
        # GT = the source point through the homography (and the inverted flow) ...
        np.testing.assert_allclose(w.backward(t, seq.tracks[:, t]), seq.source_points, atol=1e-6)
        # ... and, without flow, exactly the homography.
        p = np.concatenate([seq.source_points, np.ones((len(seq.source_points), 1))], 1)
        p = p @ w.homographies[t].T
        assert np.abs(p[:, :2] / p[:, 2:] - seq.tracks[:, t]).max() <= SMALL.flow + 1e-6
    # The rendered frame shows the source pixel at the GT position (visible points).
    src = cv2.resize(data.astronaut(), w.source_hw[::-1], interpolation=cv2.INTER_AREA)
    t = SMALL.num_frames - 1
    vis = ~seq.occluded[:, t]
    xy = np.rint(seq.tracks[vis, t]).astype(int)
    ok = (xy[:, 0] > 2) & (xy[:, 0] < 125) & (xy[:, 1] > 2) & (xy[:, 1] < 93)
    s = np.rint(w.backward(t, xy[ok].astype(float))).astype(int)
    shown = seq.frames[t][xy[ok, 1], xy[ok, 0]].astype(float)
    truth = src[s[:, 1], s[:, 0]].astype(float)
    assert np.median(np.abs(shown - truth)) < 25
    # Occlusion: a point is occluded iff out of frame or under an occluder label.
    for t in range(SMALL.num_frames):
        p = seq.tracks[:, t]
        inside = (p[:, 0] >= 0) & (p[:, 0] <= 127) & (p[:, 1] >= 0) & (p[:, 1] <= 95)
        lab = np.zeros(len(p), int)
        r = np.rint(np.clip(p, 0, [127, 95])).astype(int)
        lab[inside] = seq.labels[t][r[inside, 1], r[inside, 0]]
        agree = seq.occluded[:, t] == (~inside | (lab >= 2))
        assert agree.mean() > 0.9  # exact test uses continuous coords; rounding may differ
    assert seq.labels[0].max() >= 2 and (seq.query_points[:, 0] >= 0).all()


def test_perfect_prediction_scores_one(seq) -> None:
    m = track_scores(
        seq.query_points, seq.tracks, seq.occluded, seq.tracks, seq.occluded, (96, 128), (2, 8)
    )
    assert m["average_jaccard"] == pytest.approx(1.0)
    assert m["occlusion_accuracy"] == pytest.approx(1.0)


def test_track_and_propagate_commands(tmp_path: Path) -> None:
    frames = np.stack([np.roll(data.astronaut()[::4, ::4], 2 * t, axis=1) for t in range(5)])
    video = tmp_path / "v.npy"
    np.save(video, frames)
    q = tmp_path / "q.csv"
    q.write_text("t,x,y\n0,40,50\n2,70,60\n")
    out = tmp_path / "tracks.npz"
    # The model path once (rvm), the other readouts on cheap pixel features / none.
    for method, extra in (
        ("rvm", ["--checkpoint", "tiny"]),
        ("hybrid", ["--features", "pixels", "--pixel-grid", "8x8"]),
        ("lk", []),
        ("dis", []),
    ):
        args = ["track", str(video), "--queries", str(q), "--out", str(out), "--method", method]
        assert main(args + extra) == 0
        with np.load(out) as z:
            assert z["tracks"].shape == (2, 5, 2) and z["occluded"].shape == (2, 5)
            assert z["occluded"].dtype == bool and z["occluded"][1, :2].all()
    mask = np.zeros(frames.shape[1:3], np.uint8)
    mask[40:80, 40:90] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    masks = tmp_path / "masks.npy"
    args = ["propagate", str(video), "--first-mask", str(tmp_path / "m.png"), "--out", str(masks)]
    for extra in (
        ["--method", "rvm", "--checkpoint", "tiny"],
        [
            "--method",
            "rvm",
            "--checkpoint",
            "tiny",
            "--propagation",
            "upsample=guided",
            "guide_radius=8",
        ],
        ["--method", "dis", "--propagation", "preset=fast"],
    ):
        assert main(args + extra) == 0
        m = np.load(masks)
        assert m.shape == frames.shape[:3] and set(np.unique(m)) <= {0, 1}
    # Flow warping follows the 2 px/frame roll: the mask's columns move right by ~8 px.
    cols = np.flatnonzero((m[-1] == 1).any(0))
    assert abs(cols.min() - 48) <= 2 and abs(cols.max() - 97) <= 2, (cols.min(), cols.max())


def test_unknown_override_key_is_one_line_error(tmp_path: Path, capsys) -> None:
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((2, 32, 32, 3), np.uint8))
    q = tmp_path / "q.csv"
    q.write_text("t,x,y\n0,10,10\n")
    args = ["track", str(video), "--queries", str(q), "--out", str(tmp_path / "t.npz")]
    assert main(args + ["--method", "lk", "--tracker", "serch_radius=3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serch_radius" in err[0] and "search_radius" in err[0], err


def test_eval_synthetic_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "synthetic", "--checkpoint", "tiny", "--frames", "6", "--image-size", "96x128"]
    args += ["--sequences", "1", "--root", str(tmp_path / "none"), "--json", str(out)]
    args += ["--ranges", "1:3,3:6"]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    keys = {(r["method"], r["features"]) for r in rows}
    assert {("lk", "none"), ("rvm", "random"), ("hybrid", "pixels")} <= keys
    assert all(0 <= r["average_jaccard"] <= 1 for r in rows)
    assert "stereo AJ" in capsys.readouterr().out


def test_range_queries_start_where_each_range_starts(tmp_path: Path) -> None:
    gt = np.random.default_rng(0).uniform(0, 50, (3, 10, 2))
    occ = np.zeros((3, 10), bool)
    occ[1, 5] = True  # not visible at the second range's first frame: no query there
    q, src, which = range_queries(gt, occ, [(1, 4), (5, 10), (20, 30)])
    assert src.tolist() == [0, 1, 2, 0, 2] and which.tolist() == [0, 0, 0, 1, 1]
    assert np.allclose(q[3], [5, *gt[0, 5]]) and (q[:3, 0] == 1).all()
    out = tmp_path / "r.json"
    args = ["eval", "synthetic", "--checkpoint", "tiny", "--frames", "8", "--methods", "rvm,lk"]
    args += ["--image-size", "96x128", "--sequences", "1", "--root", str(tmp_path / "none")]
    args += ["--ranges", "1:4,4:8", "--range-queries", "--no-stereo", "--json", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert all(0 <= r["AJ[4:8]"] <= 1 for r in rows)


def test_eval_synthetic_compares_several_checkpoints(tmp_path: Path) -> None:
    """Repeated --checkpoint: one row per run (the ablation table), labelled by run directory."""
    from rvm_core.checkpoint import build_model, save_model

    small = dict(width=32, enc_layers=1, enc_heads=2, enc_mlp=64, core_layers=1, core_heads=2)
    paths = []
    for name, extra in (("base", {}), ("attn", {"aggregator": "attention"})):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "model.safetensors")
        save_model(build_model("tiny", seed=0, dec_layers=0, **small, **extra), paths[-1])
    out = tmp_path / "r.json"
    args = ["eval", "synthetic", "--frames", "4", "--image-size", "96x128", "--methods", "rvm"]
    args += ["--sequences", "1", "--root", str(tmp_path / "none"), "--json", str(out)]
    args += ["--no-stereo", "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1])]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["features"]) for r in rows} == {("rvm", "base"), ("rvm", "attn")}
    assert all(r["JF_mean"] is not None for r in rows)


def _fake_tapvid() -> dict:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
    points = rng.uniform(0.1, 0.9, (3, 6, 2))
    occluded = np.zeros((3, 6), bool)
    occluded[1, :2] = True
    return {"video": video, "points": points, "occluded": occluded}


def test_tapvid_reader_requires_trust(tmp_path: Path) -> None:
    pkl = tmp_path / "tapvid_davis.pkl"
    with open(pkl, "wb") as fh:  # the published DAVIS layout: {name: {video, points, occluded}}
        pickle.dump({"dog": _fake_tapvid()}, fh)
    with pytest.raises(ValueError, match="pickle"):
        next(read_tapvid(pkl))
    (v,) = list(read_tapvid(pkl, trust_pickle=True))
    assert v.name == "dog" and v.video.shape == (6, 48, 64, 3)
    q, rows = tapvid_queries(v.occluded, v.points * [64, 48], "first")
    assert rows.tolist() == [0, 1, 2] and q[1, 0] == 2
    assert main(["eval", "tapvid", str(pkl), "--method", "lk"]) == 1  # refused without the flag
    assert main(["eval", "tapvid", str(pkl), "--method", "lk", "--trust-pickle"]) == 0
    # Kinetics layout: a list of records with JPEG-encoded frames; and the .npz form.
    rec = _fake_tapvid()
    rec["video"] = [cv2.imencode(".jpg", f)[1].tobytes() for f in rec["video"]]
    with open(tmp_path / "kin.pkl", "wb") as fh:
        pickle.dump([rec], fh)
    (k,) = list(read_tapvid(tmp_path / "kin.pkl", trust_pickle=True))
    assert k.video.shape == (6, 48, 64, 3)
    np.savez(tmp_path / "dog.npz", **_fake_tapvid())
    args = ["eval", "tapvid", str(tmp_path / "dog.npz"), "--checkpoint", "tiny", "--method", "rvm"]
    assert main(args) == 0


def test_davis_reader_and_eval(tmp_path: Path) -> None:
    root = tmp_path / "DAVIS"
    names = ["bear", "cows"]
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for n in names:
        (root / "JPEGImages" / "480p" / n).mkdir(parents=True)
        (root / "Annotations" / "480p" / n).mkdir(parents=True)
        for t in range(4):
            img = np.roll(data.astronaut()[::8, ::8], 3 * t, axis=1)
            cv2.imwrite(str(root / "JPEGImages" / "480p" / n / f"{t:05d}.jpg"), img[..., ::-1])
            lab = np.zeros(img.shape[:2], np.uint8)
            lab[10:30, 10 + 3 * t : 30 + 3 * t] = 1
            lab[40:55, 20:40] = 2
            im = Image.fromarray(lab, mode="P")
            im.putpalette(palette)
            im.save(root / "Annotations" / "480p" / n / f"{t:05d}.png")
    seqs = list(read_davis(root))
    assert [s.name for s in seqs] == names and seqs[0].labels.max() == 2
    assert seqs[0].frames.shape[:3] == seqs[0].labels.shape
    assert read_label_png(root / "Annotations" / "480p" / "bear" / "00000.png").max() == 2
    assert main(["eval", "davis", str(root), "--features", "pixels", "--pixel-grid", "8x8"]) == 0


# -- v1 reproducibility and the v2 (layered) suite ----------------------------------------------
def test_v1_suite_is_bit_for_bit_unchanged(seq) -> None:
    """The v1 generator's output is frozen: published v1 numbers stay reproducible."""
    import hashlib

    h = hashlib.sha256()
    for a in (seq.frames, seq.tracks, seq.occluded, seq.labels, seq.query_points):
        h.update(a.tobytes())
    assert h.hexdigest() == "24c3c21f56cf88eec5945ba8f1e13ee58e454c606a2aabdae0c749fec12efb6b"


def _blocks(seed: int, block: int = 48) -> np.ndarray:
    """A 288x288 texture of random flat colour blocks: bilinear sampling inside a block is exact."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (288 // block, 288 // block, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, block, 0), block, 1)


# Clean rendering (no blur, noise or lighting) so pixels can be compared with texels exactly.
CLEAN = LayeredConfig(
    num_frames=24,
    image_hw=(120, 160),
    grid=5,
    points_per_layer=6,
    blur_samples=1,
    noise=0.0,
    gain=0.0,
    layer_gain=0.0,
    light=0.0,
    seed=5,
)
BLOCKS = [_blocks(k) for k in range(5)]


@pytest.fixture(scope="module")
def clean():
    return make_layered_sequence(BLOCKS, CLEAN)


def test_layered_tracks_follow_each_layers_warp(clean) -> None:
    layers = clean.scene.layers
    for j in np.unique(clean.layer_of):
        sel = clean.layer_of == j
        for t in range(CLEAN.num_frames):
            s = layers[j].backward(float(t), clean.tracks[sel, t])
            np.testing.assert_allclose(s, clean.source_points[sel], atol=1e-6)
    # Parallax and own motion: layers do not move together.
    moves = [
        np.median(
            np.linalg.norm(
                clean.tracks[clean.layer_of == j, -1] - clean.tracks[clean.layer_of == j, 0],
                axis=-1,
            )
        )
        for j in np.unique(clean.layer_of)
    ]
    assert np.ptp(moves) > 3.0, moves


def test_layered_pixel_at_gt_position_is_the_source_texel(clean) -> None:
    layers = clean.scene.layers
    h, w = CLEAN.image_hw
    checked = set()
    for t in range(CLEAN.num_frames):
        for n in np.flatnonzero(~clean.occluded[:, t]):
            j = clean.layer_of[n]
            x, y = np.rint(clean.tracks[n, t]).astype(int)
            if not (0 <= x < w and 0 <= y < h) or clean.labels[t, y, x] != j:
                continue  # the nearest pixel centre is past the frame or the layer's edge
            tex = layers[j].texture
            sx, sy = np.rint(clean.source_points[n]).astype(int)
            win = tex[max(sy - 3, 0) : sy + 4, max(sx - 3, 0) : sx + 4].reshape(-1, 3)
            if len(win) < 49 or (win != win[0]).any():
                continue  # only where bilinear sampling around the texel is exact
            np.testing.assert_array_equal(clean.frames[t, y, x], tex[sy, sx])
            checked.add((int(n), t))
    assert len(checked) > 200 and len({clean.layer_of[n] for n, _ in checked}) >= 4


def test_layered_occlusion_agrees_with_layer_order_and_masks(clean) -> None:
    h, w = CLEAN.image_hw
    tested = 0
    for t in range(CLEAN.num_frames):
        lab = clean.labels[t].astype(int)
        for n in range(len(clean.tracks)):
            j = clean.layer_of[n]
            x, y = clean.tracks[n, t]
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                assert clean.occluded[n, t]
                continue
            c, r = int(np.rint(x)), int(np.rint(y))
            nb = lab[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
            if (nb != nb.flat[0]).any():
                continue  # at a layer edge the nearest pixel centre may be on either side
            tested += 1
            if clean.occluded[n, t]:
                assert lab[r, c] > j  # hidden by a layer in front of its own
            else:
                assert lab[r, c] == j
    assert tested > 0.6 * clean.occluded.size
    # The label maps are the front-most layer at every pixel centre.
    for t in (0, CLEAN.num_frames - 1):
        ys, xs = np.mgrid[0:h, 0:w]
        u = np.stack([xs, ys], -1).astype(np.float64)
        np.testing.assert_array_equal(clean.labels[t], clean.scene.front_layer(float(t), u))


def test_layered_has_long_occlusions_reappearance_and_exits(clean) -> None:
    occ = clean.occluded
    back = [
        n
        for n in range(len(occ))
        if any(
            occ[n, a : a + 4].all() and not occ[n, a - 1] and (~occ[n, a + 4 :]).any()
            for a in range(1, occ.shape[1] - 4)
        )
    ]
    assert len(back) >= 5  # hidden for >= 4 frames, then visible again
    groups = track_groups(clean)
    assert set(back) <= set(np.flatnonzero(groups["reappearing"]))
    assert groups["occluders"].sum() >= 2 * CLEAN.points_per_layer - 2
    assert not (groups["background"] & groups["objects"]).any()
    sprite = CLEAN.num_objects + 1  # the sprite whose path leaves the frame
    present = [(clean.labels[t] == sprite).any() for t in range(CLEAN.num_frames)]
    gone = [t for t, p in enumerate(present) if not p]
    assert present[0] and gone and any(present[gone[0] :]), present


def test_layered_blur_noise_and_light_change_pixels_not_ground_truth(clean) -> None:
    cfg = dataclasses.replace(
        CLEAN, blur_samples=5, noise=2.0, gain=0.15, layer_gain=0.1, light=0.1
    )
    lit = make_layered_sequence(BLOCKS, cfg)
    for name in ("tracks", "occluded", "labels", "query_points"):
        np.testing.assert_array_equal(getattr(lit, name), getattr(clean, name))
    diff = np.abs(lit.frames.astype(int) - clean.frames.astype(int))
    assert diff.mean() > 3
    again = make_layered_sequence(BLOCKS, cfg)
    np.testing.assert_array_equal(again.frames, lit.frames)


def test_eval_synthetic_v2_with_flow_baselines(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "synthetic", "--suite", "v2", "--checkpoint", "tiny", "--frames", "6"]
    args += ["--image-size", "96x128", "--sequences", "1", "--root", str(tmp_path / "none")]
    args += ["--methods", "rvm,lk,dis", "--no-stereo", "--json", str(out)]
    args += ["--tracker", "dis.preset=ultrafast"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    rows = {(r["method"], r["features"]): r for r in res["rows"]}
    assert res["suite"] == "v2" and set(rows) == {
        ("lk", "none"),
        ("dis", "none"),
        ("rvm", "random"),
    }
    assert 0 <= rows[("dis", "none")]["JF_mean"] <= 1  # DIS mask warping
    assert 0 <= rows[("rvm", "random")]["JF_guided"] <= 1
    assert 0 <= rows[("dis", "none")]["AJ_background"] <= 1  # per-group scores of v2
    assert "J&F guid" in capsys.readouterr().out
    assert main(args[:-1] + ["dis.presett=fast"]) == 1  # a nested key is validated too
