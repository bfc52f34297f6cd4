"""Feature sources of ``rvm eval synthetic``: model, tokenizer, dense SIFT, pixels, random."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from rvm_core.checkpoint import DEFAULT_CHECKPOINT, build_model, load_model, save_model
from rvm_core.cli import main
from rvm_core.eval.sources import FEATURE_SOURCES, feature_sources, parse_sources
from rvm_core.preprocess import to_model_input
from rvm_core.readout.features import (
    ModelFeatures,
    SiftFeatures,
    TokenizerFeatures,
    resample_grid,
)

SMALL = dict(width=32, enc_layers=1, enc_heads=2, enc_mlp=64, core_layers=1, core_heads=2)
FRAME = np.ascontiguousarray(cv2.resize(data.astronaut(), (128, 96)))  # 96x128 RGB


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(build_model("tiny", seed=1, dec_layers=0, **SMALL), path)
    return path


@pytest.mark.parametrize("checkpoint", ["small", "default"])
def test_every_source_gives_maps_on_the_model_feature_grid(small_ckpt, checkpoint) -> None:
    ckpt = str(small_ckpt if checkpoint == "small" else DEFAULT_CHECKPOINT)
    factories, about = feature_sources(FEATURE_SOURCES, [ckpt], size=(48, 64))
    assert list(factories) == ["trained", "tokenizer", "random", "sift", "pixels"]
    model = load_model(ckpt)
    grid = model.feature_grid((48, 64))
    s = model.config.feature_stride  # the patch, or half of it with a fine feature head
    assert grid == (48 // s, 64 // s)
    for label, make in factories.items():
        source = make()
        maps = [source(FRAME), source(FRAME[::-1].copy())]
        assert source.grid_hw == grid and about[label]["grid"] == list(grid), label
        for m in maps:
            assert m.dtype == np.float32 and m.shape[:2] == grid and np.isfinite(m).all(), label
        assert not np.array_equal(maps[0], maps[1]), label
    width = model.config.width
    assert factories["trained"]().__call__(FRAME).shape[-1] == width
    assert factories["sift"]()(FRAME).shape[-1] == 128


def test_tokenizer_source_is_the_tokenizer_alone(small_ckpt) -> None:
    model = load_model(str(small_ckpt))
    source = TokenizerFeatures(model, size=(48, 64))
    with torch.inference_mode():
        x = to_model_input(torch.from_numpy(FRAME)[None], (48, 64))
        tokens = model.tokenizer(x)[0].numpy()
    np.testing.assert_array_equal(source(FRAME), tokens.reshape(6, 8, -1))
    # Not what the encoder and core make of it.
    assert not np.allclose(source(FRAME), ModelFeatures(model, size=(48, 64))(FRAME))
    # A different target grid: the tokens are resampled onto it, centres kept.
    coarse = TokenizerFeatures(model, size=(48, 64), grid_hw=(3, 4))
    assert coarse.token_grid == (6, 8) and coarse(FRAME).shape == (3, 4, model.config.width)
    np.testing.assert_allclose(coarse(FRAME), resample_grid(tokens.reshape(6, 8, -1), (3, 4)))


def test_resample_grid_keeps_constants_and_linear_ramps() -> None:
    f = np.full((6, 8, 5), 2.5, np.float32)
    np.testing.assert_allclose(resample_grid(f, (12, 16)), 2.5, rtol=1e-6)
    np.testing.assert_allclose(resample_grid(f, (3, 4)), 2.5, rtol=1e-6)
    assert resample_grid(f, (6, 8)) is not None and resample_grid(f, (6, 8)).shape == f.shape
    # Upsampling x2 with half-pixel centres: interior cells of a ramp stay on the ramp.
    ramp = np.arange(8, dtype=np.float32)[None, :, None].repeat(6, 0)
    up = resample_grid(ramp, (6, 16))[0, 1:-1, 0]
    np.testing.assert_allclose(up, (np.arange(1, 15) + 0.5) / 2 - 0.5, atol=1e-5)


def test_sift_is_dense_deterministic_and_at_cell_centres() -> None:
    a, b = SiftFeatures((12, 16)), SiftFeatures((12, 16))
    frame = data.astronaut()  # 512x512
    fa = a(frame)
    np.testing.assert_array_equal(fa, b(frame))
    np.testing.assert_array_equal(fa, a(frame))
    assert fa.shape == (12, 16, 128) and (fa.reshape(-1, 128).sum(1) > 0).all()
    kps = a.keypoints((512, 512))
    assert len(kps) == 12 * 16
    assert kps[0].pt == pytest.approx((512 / 32 - 0.5, 512 / 24 - 0.5))
    assert kps[17].pt == pytest.approx((3 * 512 / 32 - 0.5, 3 * 512 / 24 - 0.5))
    assert kps[0].size == pytest.approx(0.5 * (512 / 12 + 512 / 16))
    # Upright: rotating the image changes the descriptors.
    assert not np.allclose(fa, a(np.ascontiguousarray(np.rot90(frame, 2))))


def test_a_source_that_cannot_work_fails_in_one_line(small_ckpt, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="valid: model, tokenizer, sift, pixels, random"):
        parse_sources("model,surf")
    with pytest.raises(ValueError, match="at least 2x2"):
        SiftFeatures((1, 8))
    base = ["eval", "synthetic", "--checkpoint", str(small_ckpt), "--frames", "3"]
    base += ["--image-size", "48x64", "--sequences", "1", "--root", str(tmp_path / "none")]
    base += ["--methods", "rvm", "--no-stereo"]
    for extra, words in (
        (["--features", "sift,surf"], "unknown feature source(s) surf"),
        (["--features", "tokenizer", "--size", "50x64"], "not a multiple of"),
        (["--features", "sift", "--grid", "1x4"], "at least 2x2"),
        (["--features", "sift", "--grid", "60x80"], "finer than the 64x48 frame"),
    ):
        assert main(base + extra) == 1, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (extra, err)


def test_eval_synthetic_features_option(small_ckpt, tmp_path) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "synthetic", "--checkpoint", str(small_ckpt), "--frames", "3"]
    args += ["--image-size", "96x128", "--sequences", "1", "--root", str(tmp_path / "none")]
    args += ["--upsample", "bilinear", "--json", str(out)]
    assert main(args + ["--methods", "rvm,lk", "--features", ",".join(FEATURE_SOURCES)]) == 0
    res = json.loads(out.read_text())
    rows = {(r["method"], r["features"]): r for r in res["rows"]}
    labels = ("trained", "tokenizer", "random", "sift", "pixels")
    assert set(rows) == {("lk", "none")} | {("rvm", s) for s in labels}
    for s in labels:
        assert 0 <= rows[("rvm", s)]["average_jaccard"] <= 1
        assert 0 <= rows[("rvm", s)]["stereo_average_jaccard"] <= 1
        assert 0 <= rows[("rvm", s)]["JF_mean"] <= 1
        assert res["features"][s]["grid"] == [16, 16]  # the model's grid at its 128x128 input
    # --size moves the model's grid and the others with it; --grid moves only the others.
    args += ["--methods", "rvm", "--no-stereo", "--no-propagation"]
    assert main(args + ["--features", "model,sift", "--size", "48x64"]) == 0
    about = json.loads(out.read_text())["features"]
    assert about["trained"]["grid"] == about["sift"]["grid"] == [6, 8]
    assert main(args + ["--features", "model,pixels,tokenizer", "--grid", "6x8"]) == 0
    about = json.loads(out.read_text())["features"]
    assert about["trained"]["grid"] == [16, 16]
    assert about["pixels"]["grid"] == about["tokenizer"]["grid"] == [6, 8]


def test_track_and_propagate_take_every_source(small_ckpt, tmp_path) -> None:
    video = tmp_path / "v.npy"
    np.save(video, np.stack([np.roll(FRAME, 2 * t, axis=1) for t in range(3)]))
    (tmp_path / "q.csv").write_text("t,x,y\n0,40,30\n0,90,60\n")
    cv2.imwrite(str(tmp_path / "m.png"), (np.arange(128)[None].repeat(96, 0) > 64).astype(np.uint8))
    for source in FEATURE_SOURCES:
        common = ["--checkpoint", str(small_ckpt), "--features", source]
        out = tmp_path / f"{source}.npz"
        argv = ["track", str(video), "--queries", str(tmp_path / "q.csv"), "--out", str(out)]
        assert main(argv + ["--method", "rvm", *common]) == 0, source
        with np.load(out) as r:
            assert r["tracks"].shape == (2, 3, 2)
        masks = tmp_path / f"{source}.npy"
        argv = ["propagate", str(video), "--first-mask", str(tmp_path / "m.png")]
        assert main(argv + ["--out", str(masks), "--method", "rvm", *common]) == 0, source
        assert np.load(masks).shape == (3, 96, 128)
