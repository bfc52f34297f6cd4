"""The ONNX Runtime streaming runtime on the CPU: IOBinding ping-pong state, reset, several
streams, input checks and the GPU fallback."""

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
from rvm_core.export import export_onnx
from rvm_core.preprocess import to_model_input
from rvm_core.readout.features import ModelFeatures
from rvm_ros import runtime as runtime_module
from rvm_ros.runtime import Attempt, RVMRuntime, fallback_chain, first_line, graph_id

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
    onnx_path: Path, device: str, caplog, capfd, monkeypatch
) -> None:
    monkeypatch.setattr(_RecordingSession, "kwargs", [])
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    with caplog.at_level(logging.INFO, logger="rvm_ros.runtime"):
        rt = RVMRuntime(onnx_path, device=device)
    if rt.device != "cpu":
        pytest.skip(f"{device} is available here")
    # Every setup of the chain was tried in order, each GPU one with its reason.
    assert [a.setup for a in rt.attempts] == fallback_chain(device)
    assert all(a.reason for a in rt.attempts[:-1]) and rt.attempts[-1].reason is None
    # ORT's own constructor fallback (banner on stdout, rebuild on its providers) is off.
    assert _RecordingSession.kwargs and all(
        kw.get("enable_fallback") == 0 for kw in _RecordingSession.kwargs
    )
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
    """The real ORT session; records its keyword arguments and which binding ran on which
    thread."""

    runs: list[tuple[int, int]] = []
    kwargs: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        type(self).kwargs.append(kwargs)
        super().__init__(*args, **kwargs)

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


# -- the GPU setups' chain logic, steered onto CPU sessions --------------------------------------
CAPTURE_ERROR = "CUDA failure 900: operation not permitted when stream is capturing\nmore detail"


@pytest.fixture
def gpu_setups_on_cpu(monkeypatch) -> list[tuple[bool, str]]:
    """Make the "cuda+graphs" and "cuda" setups build real CPU sessions: their libraries "load"
    and their provider list is the CPU EP. Returns the first-run log (cuda_graph, stream)."""
    monkeypatch.setattr(runtime_module, "provider_library_error", lambda name: None)
    monkeypatch.setattr(RVMRuntime, "_providers", lambda self, setup: ["CPUExecutionProvider"])
    for setup in ("cuda+graphs", "cuda"):
        name, _, libs = runtime_module._SETUPS[setup]
        monkeypatch.setitem(runtime_module._SETUPS, setup, (name, "CPUExecutionProvider", libs))
    first_runs: list[tuple[bool, str]] = []
    real = RVMRuntime._first_runs

    def recording(self: RVMRuntime, s) -> None:  # noqa: ANN001
        first_runs.append((self.cuda_graph, s.name))
        real(self, s)

    monkeypatch.setattr(RVMRuntime, "_first_runs", recording)
    return first_runs


def _fail_first_runs(monkeypatch, when) -> None:  # noqa: ANN001
    """Make a setup's first runs raise (as a refused CUDA-graph capture does) where ``when``."""
    real = RVMRuntime._first_runs

    def failing(self: RVMRuntime, s) -> None:  # noqa: ANN001
        real(self, s)
        if when(self):
            raise RuntimeError(CAPTURE_ERROR)

    monkeypatch.setattr(RVMRuntime, "_first_runs", failing)


def test_a_refused_graph_capture_lands_on_cuda_without_graphs(
    onnx_path: Path, model, gpu_setups_on_cpu, monkeypatch, caplog
) -> None:
    _fail_first_runs(monkeypatch, lambda rt: rt.cuda_graph)
    monkeypatch.setattr(_RecordingSession, "kwargs", [])
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    with caplog.at_level(logging.INFO, logger="rvm_ros.runtime"):
        rt = RVMRuntime(onnx_path, device="cuda", threads=1, streams=("a", "b"))
    reason = CAPTURE_ERROR.splitlines()[0]
    assert rt.attempts == [Attempt("cuda+graphs", reason), Attempt("cuda", None)]
    assert rt.device == "cuda" and not rt.cuda_graph
    # graphs: stream "a" failed at its first runs; cuda: both streams ran, each once
    assert gpu_setups_on_cpu == [(True, "a"), (False, "a"), (False, "b")]
    assert [kw["enable_fallback"] for kw in _RecordingSession.kwargs] == [0, 0]
    records = [r for r in caplog.records if r.name == "rvm_ros.runtime"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].getMessage() == (
        f"rvm runtime: cuda with CUDA graphs unavailable ({reason}); using cuda without CUDA graphs"
    )
    for name in ("a", "b"):
        s = rt._streams[name]
        assert s.parity == 0 and s.frames == 0
        assert all(not st.numpy().any() for st in s.states)
        for ro in s.run_options:  # no graph id: these runs capture nothing
            with pytest.raises(RuntimeError, match="does not have configuration"):
                ro.get_run_config_entry("gpu_graph_id")
    frames = _frames(2, seed=7)
    for r, f in zip(_torch_features(model, frames), frames):
        assert np.abs(rt.step(f, "b") - r).max() <= TOL
    rt.close()


def test_graph_setup_gives_every_binding_its_own_graph_id(
    onnx_path: Path, gpu_setups_on_cpu
) -> None:
    with RVMRuntime(onnx_path, device="cuda", threads=1, streams=("a", "b")) as rt:
        assert rt.attempts == [Attempt("cuda+graphs", None)] and rt.cuda_graph
        rt.stream("c")
        ids = []
        for index, name in enumerate(("a", "b", "c")):
            for parity, ro in enumerate(rt._streams[name].run_options):
                assert ro.get_run_config_entry("gpu_graph_id") == str(graph_id(index, parity))
                ids.append(int(ro.get_run_config_entry("gpu_graph_id")))
        assert ids == list(range(1, 7))  # from 1, never repeated across streams
        assert rt.step(_frames(1, seed=8)[0], "b").shape == (32, 8, 8)


def test_cuda_libraries_are_preloaded_before_the_library_check(monkeypatch) -> None:
    calls: list[str] = []
    real_cdll = runtime_module.ctypes.CDLL
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append("preload"))
    monkeypatch.setattr(
        runtime_module.ctypes, "CDLL", lambda path, *a, **k: calls.append(path) or real_cdll(path)
    )
    runtime_module._preload_cuda_libraries.cache_clear()
    try:
        runtime_module.provider_library_error("cuda")
        runtime_module.provider_library_error("cuda")
    finally:
        runtime_module._preload_cuda_libraries.cache_clear()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA EP: nothing is preloaded or loaded")
    lib = str(Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so")
    # once per process, before the first provider-library load (other layouts load nothing)
    assert calls == (["preload", lib, lib] if Path(lib).is_file() else ["preload"])


def _runtime_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rvm-ort")}


def test_a_failed_construction_leaves_no_run_thread(
    onnx_path: Path, tmp_path: Path, gpu_setups_on_cpu, monkeypatch
) -> None:
    before = _runtime_threads()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(Exception, match="(?i)protobuf|load model"):
        RVMRuntime(bad, device="cuda")  # every session fails before a run: no thread started
    assert _runtime_threads() == before
    # Every setup's first runs fail: the run thread had started, the CPU error propagates.
    _fail_first_runs(monkeypatch, lambda rt: True)
    with pytest.raises(RuntimeError, match="CUDA failure 900"):
        RVMRuntime(onnx_path, device="cuda", threads=1)
    assert [s for s, _ in gpu_setups_on_cpu] == [True, False, False]  # graphs, cuda, cpu ran
    assert _runtime_threads() == before


def test_close_stops_the_thread_and_frees_the_session(onnx_path: Path) -> None:
    before = _runtime_threads()
    rt = RVMRuntime(onnx_path, device="cpu", threads=1)
    assert len(_runtime_threads() - before) == 1  # the first runs started it
    rt.close()
    rt.close()  # a no-op the second time
    assert _runtime_threads() == before
    assert rt.session is None and rt.streams == []
    for call in (lambda: rt.step(_frames(1, seed=0)[0]), rt.reset, lambda: rt.stream("x")):
        with pytest.raises(RuntimeError) as info:
            call()
        assert str(info.value) == "runtime is closed"
    with RVMRuntime(onnx_path, device="cpu", threads=1) as rt2:
        rt2.step(_frames(1, seed=0)[0])
    assert rt2.session is None and _runtime_threads() == before


def test_first_line() -> None:
    assert first_line(RuntimeError("  one\ntwo\n")) == "one"
    assert first_line(ValueError()) == "ValueError"
