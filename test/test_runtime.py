"""The ONNX Runtime streaming runtime on the CPU: IOBinding ping-pong state, reset, several
streams, input checks, the GPU fallback, and ``rvm bench runtime --quick``."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rvm_core.checkpoint import build_model
from rvm_core.cli import main
from rvm_core.export import export_onnx
from rvm_core.preprocess import to_model_input
from rvm_core.readout.features import ModelFeatures
from rvm_ros.runtime import RVMRuntime, fallback_chain, graph_id

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
    assert shared.streams == ["default", "cam_b", "cam_a"]  # "default" made at construction
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


@pytest.mark.parametrize("device", ["cuda", "tensorrt", "auto"])
def test_gpu_unavailable_falls_back_through_the_chain_with_one_line(
    onnx_path: Path, device: str, caplog, capfd
) -> None:
    with caplog.at_level(logging.INFO, logger="rvm_ros.runtime"):
        rt = RVMRuntime(onnx_path, device=device)
    if rt.device != "cpu":
        pytest.skip(f"{device} is available here")
    # Every setup of the chain was tried in order, each GPU one with its reason.
    assert [a.setup for a in rt.attempts] == fallback_chain(device)
    assert all(a.reason for a in rt.attempts[:-1]) and rt.attempts[-1].reason is None
    # ORT's own constructor fallback (banner on stdout, rebuild on its providers) is off.
    assert rt.session._enable_fallback is False
    records = [r for r in caplog.records if r.name == "rvm_ros.runtime"]
    assert len(records) == 1
    assert records[0].levelno == (logging.INFO if device == "auto" else logging.WARNING)
    msg = records[0].getMessage()
    assert "\n" not in msg and f"{device} unavailable" in msg and "using the CPU" in msg
    assert rt.attempts[0].reason in msg  # the real reason, once
    out = capfd.readouterr()
    assert "Traceback" not in out.err and "EP Error" not in out.out
    assert rt.step(_frames(1, seed=0)[0]).shape == (32, 8, 8)


def test_fallback_chain_order() -> None:
    assert fallback_chain("cpu") == ["cpu"]
    assert fallback_chain("cuda") == ["cuda+graphs", "cuda", "cpu"]
    assert fallback_chain("auto") == ["cuda+graphs", "cuda", "cpu"]
    assert fallback_chain("cuda", cuda_graph=False) == ["cuda", "cpu"]
    assert fallback_chain("tensorrt") == ["tensorrt", "cuda+graphs", "cuda", "cpu"]
    with pytest.raises(ValueError, match="device"):
        fallback_chain("tpu")


class _RecordingSession(ort.InferenceSession):
    """The real ORT session; records which binding ran on which thread."""

    runs: list[tuple[int, int]] = []

    def run_with_iobinding(self, iobinding, run_options=None) -> None:  # noqa: ANN001
        type(self).runs.append((id(iobinding), threading.get_ident()))
        return super().run_with_iobinding(iobinding, run_options)


def test_construction_runs_every_stream_and_parity_once_then_zeros(
    onnx_path: Path, model, monkeypatch
) -> None:
    monkeypatch.setattr(_RecordingSession, "runs", [])
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    rt = RVMRuntime(onnx_path, device="cpu", threads=1, streams=("a", "b"))
    bindings = [id(b) for name in ("a", "b") for b in rt._streams[name].bindings]
    assert [run[0] for run in _RecordingSession.runs] == bindings  # each (stream, parity) once
    for name in ("a", "b"):
        s = rt._streams[name]
        assert s.parity == 0 and s.frames == 0
        assert all(not st.numpy().any() for st in s.states)  # the first runs left no state
        assert s.features.numpy().any()  # ... but did run
    # So the streams start exactly like a fresh PyTorch stream.
    frames = _frames(2, seed=5)
    ref = _torch_features(model, frames)
    for name in ("a", "b"):
        for r, f in zip(ref, frames):
            assert np.abs(rt.step(f, name) - r).max() <= TOL
    # A stream created later gets its first runs when it is created, before its first frame.
    rt.stream("c")
    assert [run[0] for run in _RecordingSession.runs[-2:]] == [
        id(b) for b in rt._streams["c"].bindings
    ]


def test_all_runs_happen_on_one_runtime_thread(onnx_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_RecordingSession, "runs", [])
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    rt = RVMRuntime(onnx_path, device="cpu", threads=1)
    frames = _frames(2, seed=6)
    callers = [threading.get_ident()]
    worker = threading.Thread(
        target=lambda: callers.append(threading.get_ident()) or rt.step(frames[0])
    )
    worker.start()
    worker.join()
    rt.step(frames[1])
    threads = {thread for _, thread in _RecordingSession.runs}
    assert len(_RecordingSession.runs) == 2 + 1 + rt.warmup + 1
    assert len(threads) == 1 and not threads & set(callers)  # not the caller's threads
    rt.close()


def test_graph_ids_start_at_one_and_never_repeat() -> None:
    ids = [graph_id(i, p) for i in range(4) for p in (0, 1)]
    assert ids == list(range(1, 9))  # 0 is ORT's default graph, -1 "do not capture"


def test_provider_options(onnx_path: Path, model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rt = RVMRuntime(onnx_path, device="cpu", threads=1, tf32=False)
    cuda = dict(rt._providers("cuda+graphs")[0][1])
    assert cuda["enable_cuda_graph"] == "1" and cuda["use_tf32"] == "0"
    assert "enable_cuda_graph" not in rt._providers("cuda")[0][1]
    trt = dict(rt._providers("tensorrt")[0][1])
    assert trt["trt_fp16_enable"] == "False"  # an fp32 export gets no fp16 kernels
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "xdg" / "rvm" / "tensorrt")
    assert RVMRuntime(onnx_path, device="cpu")._providers("cuda")[0][1]["use_tf32"] == "1"
    f16 = export_onnx(model, tmp_path / "f16.onnx", CAMERA, (64, 64), fp16=True).path
    rt16 = RVMRuntime(f16, device="cpu", threads=1, trt_cache_dir=tmp_path / "engines")
    trt16 = dict(rt16._providers("tensorrt")[0][1])
    assert trt16["trt_fp16_enable"] == "True"
    assert trt16["trt_engine_cache_path"] == str(tmp_path / "engines")
    forced = RVMRuntime(f16, device="cpu", threads=1, trt_fp16=False)
    assert dict(forced._providers("tensorrt")[0][1])["trt_fp16_enable"] == "False"


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
