"""The trained point-track readout: causality, fixed step graph, ONNX parity, exact resume, S."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_layout import S_SIZES, make_official_checkpoint
from safetensors.torch import load_file

from rvm_core.cli import main
from rvm_core.readout.tracker import TrackerConfig, track_video
from rvm_core.readout.trained import TrainedReadout
from rvm_core.readout.trained_export import export_readout
from rvm_core.readout.trained_io import ReadoutMismatchError, check_model
from rvm_core.readout.trained_net import ReadoutConfig, ReadoutNet

IMAGE_HW = (48, 64)
GRID_HW = (6, 8)
SMALL = ReadoutConfig(feature_dim=16, levels=3, hidden=16, mlp=16)


def _meta() -> dict:
    return {"model_id": "test-00000000", "grid_hw": list(GRID_HW), "feature_dim": 16}


@pytest.fixture(scope="module")
def small_readout(tmp_path_factory):
    """A random-weight readout (seeded) exported for 48x64 frames: (net, onnx path)."""
    torch.manual_seed(0)
    net = ReadoutNet(SMALL).eval()
    path = tmp_path_factory.mktemp("readout") / "readout.onnx"
    export_readout(net, _meta(), path, image_hw=IMAGE_HW)
    return net, path


def _video(t: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (IMAGE_HW[0] + 8 * t, IMAGE_HW[1] + 8 * t, 3), dtype=np.uint8)
    frames = np.stack([base[2 * i : 2 * i + IMAGE_HW[0], i : i + IMAGE_HW[1]] for i in range(t)])
    feats = [rng.standard_normal((*GRID_HW, 16)).astype(np.float32) for _ in range(t)]
    return frames, feats


def _queries() -> np.ndarray:
    return np.array([[0, 10.0, 12.0], [0, 40.5, 30.25], [2, 20.0, 20.0], [3, 55.0, 5.0]])


def test_causal(small_readout):
    _, path = small_readout
    frames, feats = _video(8)
    cfg = TrackerConfig(method="trained", readout=str(path))
    full = track_video(_queries(), frames=frames, features=feats, config=cfg)
    part = track_video(_queries(), frames=frames[:5], features=feats[:5], config=cfg)
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a[:, :5], b)


def test_step_graph_is_fixed(small_readout):
    """One graph per frame: static frame/feature shapes, only the track count K varies."""
    _, path = small_readout
    ro = TrainedReadout(path)
    dims = {i.name: i.shape for i in ro.session.get_inputs()}
    assert dims["features"] == [1, 16, *GRID_HW] and dims["gray"] == list(IMAGE_HW)
    assert dims["state"][1] == ro.state_dim and isinstance(dims["state"][0], str)
    frames, feats = _video(4)
    state = ro.new_rows(np.array([[5.0, 5.0], [30.0, 20.0]]))
    new = np.ones(2, bool)
    for f, x in zip(frames, feats):
        gray = f.mean(-1).astype(np.uint8)
        xy, vis, state = ro.step(x, gray, state, new)
        new = np.zeros(2, bool)
        assert xy.shape == (2, 2) and vis.shape == (2,) and state.shape == (2, ro.state_dim)


def test_onnx_matches_pytorch(small_readout):
    net, path = small_readout
    ro = TrainedReadout(path)
    frames, feats = _video(5, seed=1)
    xy0 = np.array([[10.0, 12.0], [40.5, 30.25], [63.0, 0.0]])
    s_np, s_pt = ro.new_rows(xy0), net.new_state(torch.tensor(xy0, dtype=torch.float32))[None]
    for t, (f, x) in enumerate(zip(frames, feats)):
        gray = f.mean(-1).astype(np.uint8)
        new = np.full(3, t == 0)
        xy, vis, s_np = ro.step(x, gray, s_np, new)
        with torch.no_grad():
            out = net.step(
                torch.from_numpy(np.moveaxis(x, -1, 0)[None]),
                torch.from_numpy(gray)[None, None],
                s_pt,
                torch.from_numpy(new[None].astype(np.float32)),
            )
        s_pt = out["state"]
        assert np.abs(xy - out["xy"][0].numpy()).max() <= 1e-4
        assert np.abs(vis - out["visibility"][0].numpy()).max() <= 1e-4
        assert np.abs(s_np - s_pt[0].numpy()).max() <= 1e-4


def test_mismatch_is_one_line(small_readout):
    _, path = small_readout
    ro = TrainedReadout(path)
    with pytest.raises(ReadoutMismatchError) as err:
        ro.check_features(np.zeros((6, 8, 32), np.float32))
    assert "\n" not in str(err.value) and "test-00000000" in str(err.value)
    with pytest.raises(ReadoutMismatchError) as err:
        check_model(ro.meta, "tiny-12345678")
    assert "\n" not in str(err.value) and "rvm train-readout" in str(err.value)
    check_model(ro.meta, "test-00000000")


def _train(tmp_path, out, checkpoint, *extra):
    args = [
        "train-readout", "--checkpoint", str(checkpoint), "--out", str(out),
        "--data", str(tmp_path / "clips"), "--num-clips", "2", "--clip-frames", "6",
        "--image-size", "48x64", "--save-every", "0",
        "--train", "clips=1", "tracks=4", "window=3", "warmup=2",
    ]  # fmt: skip
    return main(args + list(extra))


def test_resume_is_exact(tmp_path):
    assert _train(tmp_path, tmp_path / "a", "tiny", "--steps", "4", "--no-export") == 0
    assert _train(tmp_path, tmp_path / "b", "tiny", "--steps", "4", "--stop-after", "2") == 0
    assert _train(tmp_path, tmp_path / "b", "tiny", "--resume", "--no-export") == 0
    a = load_file(str(tmp_path / "a" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "b" / "train_state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_official_s_end_to_end(tmp_path):
    """A readout trained 2 steps for a random-weight official-layout S runs in ``rvm track``."""
    ckpt = tmp_path / "rvm_s.npz"
    np.savez(ckpt, **make_official_checkpoint(S_SIZES, seed=1))
    run = tmp_path / "s_readout"
    assert _train(tmp_path, run, ckpt, "--steps", "2", "--size", "64x64") == 0
    frames, _ = _video(4)
    np.save(tmp_path / "clip.npy", frames)
    np.save(tmp_path / "q.npy", _queries())
    out = tmp_path / "tracks.npz"
    args = ["track", str(tmp_path / "clip.npy"), "--queries", str(tmp_path / "q.npy")]
    args += ["--out", str(out), "--method", "trained", "--checkpoint", str(ckpt)]
    args += ["--size", "64x64", "--tracker", f"readout={run}"]
    assert main(args) == 0
    res = np.load(out)
    assert res["tracks"].shape == (4, 4, 2) and np.isfinite(res["tracks"]).all()


def test_shipped_readout_matches_shipped_model():
    """The readout that ``tracks.method: trained`` loads by default reads the shipped model."""
    from rvm_core.checkpoint import load_model
    from rvm_core.export import model_id

    model = load_model("default")
    ro = TrainedReadout("default")
    ro.check_model(model_id(model))
    assert ro.grid_hw == model.feature_grid(model.config.image_size)
    assert ro.image_hw == (480, 640)
