"""The ONNX Runtime streaming runtime on the CPU: IOBinding ping-pong state, reset, several
streams, input checks, the GPU fallback, and ``rvm bench runtime --quick``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rvm_core.checkpoint import build_model
from rvm_core.cli import main
from rvm_core.export import export_onnx
from rvm_core.preprocess import to_model_input
from rvm_core.readout.features import ModelFeatures
from rvm_ros.runtime import RVMRuntime

SMALL = dict(
    patch_size=8,
    width=32,
    enc_layers=2,
    enc_heads=2,
    enc_mlp=64,
    core_layers=1,
    core_heads=2,
    core_mlp=64,
    dec_layers=0,
    image_size=(64, 64),
)
CAMERA = (48, 80)  # camera frames differ from the 64x64 model input: resized in the graph
TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("tiny", seed=0, **SMALL).eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rt") / "small.onnx"
    return export_onnx(model, path, CAMERA, model_size=(64, 64)).path


@pytest.fixture
def runtime(onnx_path: Path) -> RVMRuntime:
    return RVMRuntime(onnx_path, device="cpu", threads=1)


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *CAMERA, 3), dtype=np.uint8)


def _torch_features(model, frames: np.ndarray, warmup: int | None = None) -> list[np.ndarray]:
    """PyTorch features [D,h,w] per frame, streamed from the zero state (with the warm start)."""
    fn = ModelFeatures(model, size=(64, 64), warmup=warmup)
    return [fn(f).transpose(2, 0, 1) for f in frames]


def test_state_advances_like_pytorch(runtime: RVMRuntime, model) -> None:
    frames = _frames(4, seed=0)
    ref = _torch_features(model, frames)
    got = [runtime.step(f) for f in frames]
    for r, g in zip(ref, got):
        assert g.shape == (32, 8, 8) and g.dtype == np.float32
        assert np.abs(g - r).max() <= TOL
    # Each step's output is a copy: later steps must not overwrite what was returned.
    assert not np.allclose(got[0], got[1])
    assert runtime.frames() == 4 and runtime.streams == ["default"]


def test_warm_start_steps_the_first_frame_again(onnx_path: Path, model) -> None:
    frames = _frames(3, seed=4)
    cold = RVMRuntime(onnx_path, device="cpu", threads=1, warmup=0)
    warm = RVMRuntime(onnx_path, device="cpu", threads=1, warmup=2)
    with torch.inference_mode():  # cold = one raw model.step per frame
        x = to_model_input(torch.from_numpy(frames[0])[None], (64, 64))
        ref = model.step(x)[0][0, 1:].T.reshape(32, 8, 8).numpy()
    assert np.abs(cold.step(frames[0]) - ref).max() <= TOL
    # warmup=2: the first frame is stepped 3 times, later frames once (and again after reset).
    cold.reset()
    expected = [[cold.step(frames[0]) for _ in range(3)][-1], cold.step(frames[1])]
    expected.append(cold.step(frames[2]))
    for _ in range(2):
        got = [warm.step(f) for f in frames]
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, atol=1e-6)
        assert warm.frames() == 3
        warm.reset()
    with pytest.raises(ValueError, match="warmup"):
        RVMRuntime(onnx_path, device="cpu", warmup=-1)


def test_ping_pong_buffers_never_alias(runtime: RVMRuntime) -> None:
    runtime.step(_frames(1, seed=0)[0])
    s = runtime._streams["default"]
    assert s.parity == (1 + runtime.warmup) % 2  # each run flips which state buffer is read
    for parity, binding in enumerate(s.bindings):
        assert binding is not s.bindings[1 - parity]
    assert s.states[0].data_ptr() != s.states[1].data_ptr()
    assert s.image.data_ptr() not in (s.states[0].data_ptr(), s.states[1].data_ptr())


def test_reset_gives_first_frame_output_again(runtime: RVMRuntime) -> None:
    frames = _frames(3, seed=1)
    first = runtime.step(frames[0])
    runtime.step(frames[1])
    runtime.step(frames[2])  # odd number of steps: reset must work from either parity
    runtime.reset()
    assert runtime.frames() == 0
    np.testing.assert_array_equal(runtime.step(frames[0]), first)
    runtime.step(frames[1])
    runtime.reset("default")
    np.testing.assert_array_equal(runtime.step(frames[0]), first)


def test_two_streams_do_not_mix(onnx_path: Path) -> None:
    a, b = _frames(5, seed=2), _frames(5, seed=3)
    alone = RVMRuntime(onnx_path, device="cpu", threads=1)
    ref_a = [alone.step(f, "a") for f in a]
    ref_b = [alone.step(f, "b") for f in b]
    shared = RVMRuntime(onnx_path, device="cpu", threads=1)
    cam_b = shared.stream("cam_b")
    for i in range(5):
        np.testing.assert_array_equal(shared.step(a[i], "cam_a"), ref_a[i])
        np.testing.assert_array_equal(cam_b.step(b[i]), ref_b[i])
    assert shared.streams == ["cam_b", "cam_a"]
    # Resetting one stream leaves the other alone.
    shared.reset("cam_a")
    np.testing.assert_array_equal(shared.step(a[0], "cam_a"), ref_a[0])
    assert shared.frames("cam_b") == 5


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((64, 64, 3), np.uint8), r"must be 48x80x3"),
        (np.zeros((48, 80, 4), np.uint8), r"must be 48x80x3"),
        (np.zeros((1, 48, 80, 3), np.uint8), r"must be 48x80x3"),
        (np.zeros((48, 80, 3), np.float32), r"uint8"),
        ([[0, 0, 0]], r"numpy uint8 array"),
    ],
)
def test_bad_input_raises_value_error(runtime: RVMRuntime, image, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        runtime.step(image)
    assert runtime.frames() == 0  # nothing ran, the state did not move


def test_metadata(runtime: RVMRuntime, model) -> None:
    m = runtime.metadata
    assert m.input_size == CAMERA and m.grid == (8, 8) and m.feature_dim == 32
    assert m.patch_stride == (6.0, 10.0)
    assert m.config["width"] == 32
    assert m.model_id in repr(runtime)


def test_fp16_features_dtype(model, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "f16.onnx", CAMERA, (64, 64), features_fp16=True).path
    rt = RVMRuntime(path, device="cpu", threads=1)
    frames = _frames(2, seed=4)
    got = [rt.step(f) for f in frames]
    ref = _torch_features(model, frames)
    assert got[0].dtype == np.float16
    assert np.abs(got[1].astype(np.float32) - ref[1]).max() <= 2e-3


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_unavailable_falls_back_with_one_line(
    onnx_path: Path, device: str, caplog, capfd
) -> None:
    with caplog.at_level(logging.INFO, logger="rvm_ros.runtime"):
        rt = RVMRuntime(onnx_path, device=device)
    if rt.device != "cpu":
        pytest.skip(f"{device} is available here")
    records = [r for r in caplog.records if r.name == "rvm_ros.runtime"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    msg = records[0].getMessage()
    assert "\n" not in msg and f"{device} unavailable" in msg and "using the CPU" in msg
    assert "Traceback" not in capfd.readouterr().err
    assert rt.step(_frames(1, seed=0)[0]).shape == (32, 8, 8)


def test_bad_device_and_missing_file(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        RVMRuntime(onnx_path, device="tpu")
    with pytest.raises(FileNotFoundError):
        RVMRuntime(tmp_path / "missing.onnx")


def test_runtime_imports_no_torch() -> None:
    code = (
        "import sys, rvm_ros.runtime; sys.exit('torch' in sys.modules or 'rvm_core' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_bench_runtime_quick(capsys) -> None:
    assert main(["bench", "runtime", "--quick", "--sizes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "GEMM fp32 GFLOP/s" in out and "tiny-quick" in out and "ratio" in out
