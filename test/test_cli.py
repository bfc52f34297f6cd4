"""The `rvm convert / info / features` commands, run in-process on real files."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch
from official_layout import OfficialSizes, make_official_checkpoint

from rvm_core import load_model
from rvm_core.cli import main


@pytest.fixture(scope="module")
def official_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "official.npz"
    np.savez(path, **make_official_checkpoint(OfficialSizes(), seed=5))
    return path


def test_convert_then_info(official_npz, tmp_path, capsys):
    dst = tmp_path / "m.safetensors"
    assert main(["convert", str(official_npz), str(dst)]) == 0
    a, b = load_model(official_npz), load_model(dst)
    frame = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(a.step(frame)[0], b.step(frame)[0], rtol=0, atol=0)
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "encoder+core params" in out and "width: 32" in out


def test_info_of_named_config(capsys):
    assert main(["info", "S"]) == 0
    assert "encoder+core params: 33,222,272" in capsys.readouterr().out


def test_convert_malformed_fails_with_one_line(official_npz, tmp_path, capsys):
    arrays = dict(np.load(official_npz))
    del arrays["encoder/LayerNorm_0/scale"]
    np.savez(tmp_path / "bad.npz", **arrays)
    assert main(["convert", str(tmp_path / "bad.npz"), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "missing keys: encoder/LayerNorm_0/scale" in err
    assert not (tmp_path / "out.safetensors").exists()


def _write_inputs(tmp_path, frames: np.ndarray) -> dict[str, str]:
    np.save(tmp_path / "clip.npy", frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    with av.open(str(tmp_path / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return {"npy": "clip.npy", "folder": "frames", "mp4": "clip.mp4"}


def test_features_from_npy_folder_and_video(official_npz, tmp_path):
    rng = np.random.default_rng(0)
    frames = (rng.random((4, 48, 64, 3)) * 255).astype(np.uint8)
    inputs = _write_inputs(tmp_path, frames)
    results = {}
    for kind, name in inputs.items():
        out = tmp_path / f"{kind}.npy"
        code = main(
            ["features", str(tmp_path / name), "--checkpoint", str(official_npz), "--out", str(out)]
        )
        assert code == 0
        results[kind] = np.load(out)
        assert results[kind].shape == (4, 16, 16, 32)  # default size = the model's 256x256
        assert results[kind].dtype == np.float32
    # Lossless inputs give identical features; the mpeg4 file only approximately.
    np.testing.assert_array_equal(results["npy"], results["folder"])
    assert np.abs(results["mp4"] - results["npy"]).mean() < 0.1 * np.abs(results["npy"]).mean()
    small = tmp_path / "small.npy"
    assert main(["features", str(tmp_path / "clip.npy"), "--checkpoint", str(official_npz),
                 "--out", str(small), "--size", "32x48"]) == 0  # fmt: skip
    assert np.load(small).shape == (4, 2, 3, 32)


def test_features_rejects_bad_size(official_npz, tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((2, 32, 32, 3), np.uint8))
    args = ["features", str(tmp_path / "clip.npy"), "--checkpoint", str(official_npz)]
    assert main([*args, "--out", str(tmp_path / "f.npy"), "--size", "30x40"]) == 1
    assert "not a multiple of the patch size 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["features", "v.mp4", "--out", "f.npy"],
        ["export-onnx", "--out", "m.onnx", "--input-size", "480x640"],
        ["track", "v.mp4", "--queries", "q.csv", "--out", "t.npz"],
        ["propagate", "v.mp4", "--first-mask", "m.png", "--out", "m.npy"],
        ["eval", "tapvid", "data.npz"],
        ["eval", "davis", "davis/"],
    ],
)
def test_checkpoint_defaults_to_the_shipped_model(argv):
    from rvm_core.checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint
    from rvm_core.cli import build_parser

    args = build_parser().parse_args(argv)
    assert DEFAULT_CHECKPOINT.is_file()
    assert resolve_checkpoint(args.checkpoint) == DEFAULT_CHECKPOINT


def test_track_without_checkpoint_runs_the_shipped_model(tmp_path):
    video = tmp_path / "v.npy"
    rng = np.random.default_rng(0)
    np.save(video, rng.integers(0, 255, (3, 96, 128, 3), dtype=np.uint8))
    (tmp_path / "q.csv").write_text("t,x,y\n0,40,30\n")
    out = tmp_path / "t.npz"
    argv = ["track", str(video), "--queries", str(tmp_path / "q.csv"), "--out", str(out)]
    assert main(argv + ["--method", "rvm"]) == 0
    with np.load(out) as r:
        assert r["tracks"].shape == (1, 3, 2) and r["occluded"].shape == (1, 3)


@pytest.mark.parametrize("kind", ["corrupt", "empty", "empty_folder", "missing"])
def test_features_bad_video_is_one_line(tmp_path, capsys, kind):
    video = tmp_path / "v.mp4"
    if kind == "corrupt":
        video.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "empty":
        video.write_bytes(b"")
    elif kind == "empty_folder":
        video = tmp_path / "frames"
        video.mkdir()
    assert main(["features", str(video), "--out", str(tmp_path / "f.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rvm features: error: "), err
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize(
    "row, why",
    [
        ("0,nan,30", "query row 1 (t=0, x=nan, y=30): not finite"),
        ("0,40,inf", "query row 1 (t=0, x=40, y=inf): not finite"),
        ("0,128,30", "query row 1 (t=0, x=128, y=30): outside the 128x96 image"),
        ("0,40,-3", "query row 1 (t=0, x=40, y=-3): outside the 128x96 image"),
        ("5,40,30", "query row 1 (t=5, x=40, y=30): frame outside the video's 3 frames"),
    ],
)
def test_track_rejects_bad_query_rows_by_name(tmp_path, capsys, row, why):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((3, 96, 128, 3), np.uint8))
    (tmp_path / "q.csv").write_text(f"t,x,y\n0,10,10\n{row}\n")
    argv = ["track", str(video), "--queries", str(tmp_path / "q.csv"), "--out", str(tmp_path / "t")]
    assert main(argv + ["--method", "lk"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rvm track: error: {why}"]
