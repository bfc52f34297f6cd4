"""ONNX export of one streaming step: parity with PyTorch, resize in the graph, fp16, metadata,
the analytic FLOP count, and the ``rvm export-onnx`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rvm_core.checkpoint import build_model, save_model
from rvm_core.cli import main
from rvm_core.export import METADATA_KEYS, export_onnx, model_id
from rvm_core.flops import step_flops
from rvm_core.preprocess import to_model_input
from rvm_ros.runtime import read_metadata

# Small enough for a fast test, with every part of a real model (2 heads, posenc resize: 8x8
# grid vs the 16x16 table, a recurrent core).
SMALL = dict(
    patch_size=8,
    width=32,
    enc_layers=2,
    enc_heads=2,
    enc_mlp=64,
    core_layers=2,
    core_heads=2,
    core_mlp=64,
    dec_layers=0,
    image_size=(64, 64),
)
FRAMES = 20
FP32_TOL = 1e-4
# fp16 bounds, measured on this model over 20 frames (|features| up to ~3): fp16 features from
# fp32 compute differ by rounding only (<= 2^-11 relative); a full fp16 graph adds fp16 compute
# (measured ~2.5e-3) while the state stays float32 between steps.
FP16_FEATURES_TOL = 2e-3
FP16_GRAPH_TOL = 1e-2


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("tiny", seed=0, **SMALL).eval()


def _video(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 frames [n,h,w,3] (noise plus a moving gradient)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    frames = [
        (127 + 60 * np.sin((x + 3 * t) / 7.0 + y / 11.0))[..., None] + rng.normal(0, 25, (h, w, 3))
        for t in range(n)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _torch_stream(model, video: np.ndarray, size: tuple[int, int]) -> list[tuple]:
    """PyTorch reference: [(features grid [1,D,h,w], state [1,1+N,D])] per frame."""
    h, w = model.feature_grid(size)
    out, state = [], None
    with torch.inference_mode():
        for frame in video:
            x = to_model_input(torch.from_numpy(frame)[None], size)
            feats, state = model.step(x, state)
            grid = feats[:, 1:].transpose(1, 2).reshape(1, -1, h, w)
            out.append((grid.numpy(), state.numpy()))
    return out


def _ort_stream(path: Path, video: np.ndarray) -> list[tuple]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    state = np.zeros(sess.get_inputs()[1].shape, np.float32)
    out = []
    for frame in video:
        feats, state = sess.run(None, {"image": frame[None], "state_in": state})
        out.append((feats, state))
    return out


@pytest.mark.parametrize(("attention", "frames"), [("onnx", FRAMES), ("ort", 5)])
def test_parity_fp32(model, tmp_path: Path, attention: str, frames: int) -> None:
    """20 streamed frames for the default export; a few for the contrib-op variant."""
    path = export_onnx(model, tmp_path / "m.onnx", (64, 64), attention=attention).path
    video = _video(frames, 64, 64)
    ref = _torch_stream(model, video, (64, 64))
    got = _ort_stream(path, video)
    for (rf, rs), (gf, gs) in zip(ref, got):
        assert gf.shape == rf.shape == (1, 32, 8, 8) and gf.dtype == np.float32
        assert np.abs(gf - rf).max() <= FP32_TOL
        assert np.abs(gs - rs).max() <= FP32_TOL


def test_parity_fp32_conv_stem(tmp_path: Path) -> None:
    """The default model's MobileNetV2 stem (convolutions, ReLU6, residuals) exports exactly."""
    m = build_model("tiny", seed=0, **{**SMALL, "stem": "mobilenetv2"}).eval()
    path = export_onnx(m, tmp_path / "m.onnx", (48, 80)).path
    video = _video(FRAMES, 48, 80)
    for (rf, rs), (gf, gs) in zip(_torch_stream(m, video, (64, 64)), _ort_stream(path, video)):
        assert gf.shape == rf.shape == (1, 32, 8, 8)
        assert np.abs(gf - rf).max() <= FP32_TOL
        assert np.abs(gs - rs).max() <= FP32_TOL


def test_parity_fp32_fine_features(tmp_path: Path) -> None:
    """Features at half the patch stride (stride-16 state + the stem's stride-8 map) export
    exactly, with a trained-looking (non-zero) state branch; the grid metadata is the fine one."""
    overrides = {**SMALL, "stem": "mobilenetv2", "patch_size": 16, "fine_features": True}
    m = build_model("tiny", seed=0, **overrides).eval()
    with torch.no_grad():
        for p in (m.fine.state.weight, m.fine.dense_out.weight):
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    path = export_onnx(m, tmp_path / "m.onnx", (64, 96), model_size=(64, 96)).path
    assert read_metadata(path).grid == (8, 12)
    video = _video(6, 64, 96)
    ref = _torch_stream(m, video, (64, 96))
    for (rf, rs), (gf, gs) in zip(ref, _ort_stream(path, video)):
        assert gf.shape == rf.shape == (1, 32, 8, 12)
        assert rs.shape == gs.shape == (1, 1 + 4 * 6, 32)
        assert np.abs(gf - rf).max() <= FP32_TOL
        assert np.abs(gs - rs).max() <= FP32_TOL


def test_camera_size_differs_from_model_size(model, tmp_path: Path) -> None:
    """The graph resizes a 48x80 camera frame to the 64x64 model input like to_model_input."""
    path = export_onnx(model, tmp_path / "m.onnx", (48, 80), model_size=(64, 64)).path
    video = _video(5, 48, 80, seed=1)
    for (rf, rs), (gf, gs) in zip(_torch_stream(model, video, (64, 64)), _ort_stream(path, video)):
        assert np.abs(gf - rf).max() <= FP32_TOL
        assert np.abs(gs - rs).max() <= FP32_TOL


def test_model_size_must_be_patch_multiple(model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        export_onnx(model, tmp_path / "m.onnx", (64, 64), model_size=(60, 64))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", (64, 64), opset=23)


@pytest.mark.parametrize(("fp16", "tol"), [(False, FP16_FEATURES_TOL), (True, FP16_GRAPH_TOL)])
def test_fp16(model, tmp_path: Path, fp16: bool, tol: float) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", (64, 64), fp16=fp16, features_fp16=True).path
    video = _video(FRAMES, 64, 64)
    for (rf, rs), (gf, gs) in zip(_torch_stream(model, video, (64, 64)), _ort_stream(path, video)):
        assert gf.dtype == np.float16 and gs.dtype == np.float32
        assert np.abs(gf.astype(np.float32) - rf).max() <= tol
        assert np.abs(gs - rs).max() <= (tol if fp16 else FP32_TOL)
    # Exporting in fp16 must leave the PyTorch model in float32.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_graph_io_opset_and_metadata(model, tmp_path: Path) -> None:
    result = export_onnx(model, tmp_path / "m.onnx", (48, 80), model_size=(64, 64))
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) <= 22
    ops = {(n.domain or "ai.onnx", n.op_type) for n in proto.graph.node}
    assert ("ai.onnx", "Attention") not in ops  # opset <= 22: no opset-23 Attention op
    assert ("ai.onnx", "Gelu") in ops and ("ai.onnx", "Tanh") not in ops  # one fused GELU op

    def io(values) -> dict:
        out = {}
        for v in values:
            t = v.type.tensor_type
            out[v.name] = (t.elem_type, [d.dim_value for d in t.shape.dim])
        return out

    u8, f32 = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT
    assert io(proto.graph.input) == {"image": (u8, [1, 48, 80, 3]), "state_in": (f32, [1, 65, 32])}
    assert io(proto.graph.output) == {
        "features": (f32, [1, 32, 8, 8]),
        "state_out": (f32, [1, 65, 32]),
    }
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(METADATA_KEYS) <= set(props)
    meta = read_metadata(result.path)
    assert meta.model_id == model_id(model) and meta.model_id.startswith("tiny-")
    assert meta.input_size == (48, 80) and meta.model_size == (64, 64) and meta.grid == (8, 8)
    assert meta.patch_stride == (6.0, 10.0)  # camera pixels per feature cell, y and x
    assert meta.feature_dim == 32 and meta.features_dtype == "float32"
    assert meta.state_shape == (1, 65, 32)
    assert meta.config == json.loads(model.config.to_json())


@pytest.mark.parametrize(
    ("camera", "fp16"), [((48, 80), False), ((64, 64), False), ((48, 80), True)]
)
def test_image_feeds_a_cast_first(model, tmp_path: Path, camera: tuple, fp16: bool) -> None:
    # TensorRT takes a uint8 network input only when it feeds a Cast directly.
    path = export_onnx(model, tmp_path / "m.onnx", camera, model_size=(64, 64), fp16=fp16).path
    graph = onnx.load(str(path)).graph
    consumers = [n for n in graph.node if "image" in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]
    to = next(a.i for a in consumers[0].attribute if a.name == "to")
    assert to == onnx.TensorProto.FLOAT


def test_model_id_tracks_weights(model) -> None:
    other = build_model("tiny", seed=1, **SMALL)
    assert model_id(model) == model_id(build_model("tiny", seed=0, **SMALL))
    assert model_id(model) != model_id(other)


@pytest.mark.parametrize(
    ("aggregator", "stem", "patch"),
    [
        ("gru", "patch", 8),
        ("attention", "patch", 8),
        ("gru", "mobilenetv2", 8),
        ("gru", "fine", 16),
    ],
)
def test_flops_match_flop_counter(aggregator: str, stem: str, patch: int) -> None:
    """The analytic count equals torch's FlopCounterMode (math SDPA, so attention is counted)."""
    fine = stem == "fine"
    overrides = {"aggregator": aggregator, "stem": "mobilenetv2" if fine else stem}
    overrides.update(patch_size=patch, fine_features=fine)
    m = build_model("tiny", seed=0, **{**SMALL, **overrides}).eval()
    x = torch.rand(1, 3, 8 * patch, 6 * patch)  # a non-square 8x6 token grid
    with torch.no_grad():
        _, state = m.step(x)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            m.step(x, torch.randn_like(state))
    flops = step_flops(m.config, (8, 6))
    assert flops["total"] == counter.get_total_flops()
    parts = ("patch_embed", "encoder", "core", "fine")
    assert flops["total"] == sum(flops[k] for k in parts)
    assert (flops["fine"] > 0) == fine


def test_cli_export_end_to_end(model, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "small.safetensors"
    save_model(model, ckpt)
    out = tmp_path / "cam.onnx"
    argv = ["export-onnx", "--checkpoint", str(ckpt), "--out", str(out), "--input-size", "48x80"]
    assert main([*argv, "--model-size", "64x64", "--features-fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta.input_size == (48, 80) and meta.features_dtype == "float16"
    # A bad size is one error line and exit status 1, not a traceback.
    assert main([*argv, "--model-size", "60x64"]) == 1
    assert "multiple of the patch" in capsys.readouterr().err
