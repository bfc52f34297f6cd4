"""The model: official checkpoint layout, parameter counts, streaming semantics, ablations."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from official_layout import S_SIZES, OfficialSizes, make_official_checkpoint, official_shapes

from rvm_core import CheckpointError, RVMConfig, build_model, load_model, save_model
from rvm_core.checkpoint import count_parameters, model_to_official, official_key
from rvm_core.config import CONFIGS
from rvm_core.model import RVM, patchify, reconstruction_loss, sample_mask, unpatchify
from rvm_core.model.decoder import visible_indices

# The released RVM-S key list (names and shapes only, read off the published checkpoint).
SHAPES_FILE = Path(__file__).parent / "data/official_rvm_s_param_shapes.txt"
TINY = RVMConfig(
    name="t",
    patch_size=8,
    width=32,
    enc_layers=2,
    enc_heads=2,
    enc_mlp=64,
    core_layers=2,
    core_heads=4,
    core_mlp=48,
    dec_width=24,
    dec_layers=1,
    dec_heads=3,
    dec_mlp=40,
    image_size=(32, 48),
)


@pytest.fixture(scope="module")
def model() -> RVM:
    return build_model(TINY, seed=0).eval()


def test_generator_matches_released_s_layout():
    released = {
        line.split(" ", 1)[0]: tuple(
            int(v) for v in line.split(" ", 1)[1].strip("()\n, ").split(",")
        )
        for line in SHAPES_FILE.read_text().splitlines()
    }
    assert official_shapes(S_SIZES) == released


def test_model_maps_onto_released_s_layout():
    with torch.device("meta"):
        model = RVM(CONFIGS["S"])
    ours = {official_key(k) for k in model.state_dict()}
    assert ours == set(official_shapes(S_SIZES))


@pytest.mark.parametrize(
    "name, enc_core, total",
    [("S", 33_222_272, 67_480_448), ("L", 374_483_968, None), ("B", 125_816_064, None)],
)
def test_parameter_counts(name, enc_core, total):
    with torch.device("meta"):
        counts = count_parameters(RVM(CONFIGS[name]))
    assert counts["encoder+core"] == enc_core
    if total is not None:
        assert counts["total"] == total


def test_official_npz_loads_with_inferred_sizes_and_roundtrips(tmp_path):
    sizes = OfficialSizes()
    arrays = make_official_checkpoint(sizes, seed=1)
    np.savez(tmp_path / "ckpt.npz", **arrays)
    model = load_model(tmp_path / "ckpt.npz")
    c = model.config
    assert (c.width, c.patch_size, c.enc_layers, c.enc_heads, c.enc_mlp) == (32, 16, 2, 2, 64)
    assert (c.core_layers, c.core_heads, c.core_mlp) == (2, 4, 48)
    assert (c.dec_width, c.dec_layers, c.dec_heads, c.dec_mlp) == (24, 2, 3, 40)
    back = model_to_official(model)
    assert set(back) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_encoder_only_official_checkpoint_loads(tmp_path):
    arrays = make_official_checkpoint(OfficialSizes(dec_layers=0), seed=2)
    np.savez(tmp_path / "enc.npz", **arrays)
    model = load_model(tmp_path / "enc.npz")
    assert model.decoder is None
    features, _ = model.step(torch.rand(1, 3, 32, 32))
    assert features.shape == (1, 5, 32)


def test_project_checkpoint_roundtrip(tmp_path, model):
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    video = torch.rand(1, 3, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(video), model.encode_video(video))


def test_malformed_checkpoints_fail_with_one_line(tmp_path):
    arrays = make_official_checkpoint(OfficialSizes(), seed=3)
    broken = dict(arrays)
    del broken["rnn_core/state_reset/kernel"]
    broken["encoder/layers_0/mlp/dense_in/bias"] = np.zeros(7, np.float32)
    broken["something/else"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "broken.npz")
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys: rnn_core/state_reset/kernel" in msg
    assert "unexpected keys: something/else" in msg
    assert "bad shapes: encoder/layers_0/mlp/dense_in/bias" in msg

    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an official RVM checkpoint"):
        load_model(tmp_path / "foreign.npz")

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError):  # an object array would need unpickling: refused
        np.savez(tmp_path / "pickled.npz", **arrays, evil=np.array([{"a": 1}], dtype=object))
        load_model(tmp_path / "pickled.npz")

    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_streaming_is_causal(model):
    video = torch.rand(1, 6, 3, 32, 48)
    changed = video.clone()
    changed[:, 4:] = torch.rand(1, 2, 3, 32, 48)
    with torch.no_grad():
        a, b = model.encode_video(video), model.encode_video(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_encode_video_equals_repeated_step(model):
    video = torch.rand(2, 5, 3, 32, 48)
    with torch.no_grad():
        batch = model.encode_video(video)
        state, steps = None, []
        for t in range(video.shape[1]):
            features, state = model.step(video[:, t], state)
            steps.append(features)
    assert batch.shape == (2, 5, 1 + 4 * 6, 32)
    torch.testing.assert_close(batch, torch.stack(steps, 1), rtol=0, atol=1e-6)


def test_state_starts_at_zero_and_carries_information(model):
    frame = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f0, _ = model.step(frame)
        fz, _ = model.step(frame, torch.zeros(1, 25, 32))
        _, s = model.step(torch.rand(1, 3, 32, 48))
        f1, _ = model.step(frame, s)
    torch.testing.assert_close(f0, fz, rtol=0, atol=0)
    assert (f0 - f1).abs().max() > 1e-3


def test_reconstruct_shapes_mask_and_loss(model):
    g = torch.Generator().manual_seed(0)
    mask = sample_mask(2, 3, 24, 0.9, generator=g)
    assert mask.shape == (2, 3, 24) and mask.dtype == torch.bool
    assert ((~mask).sum(-1) == int(24 * (1 - 0.9))).all()
    again = sample_mask(2, 3, 24, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    source, target = torch.rand(2, 4, 3, 32, 48), torch.rand(2, 3, 3, 32, 48)
    deltas = torch.tensor([[4, 10, 51], [5, 6, 70]])
    pred = model.reconstruct(source, target, deltas, mask)
    assert pred.shape == target.shape
    loss = reconstruction_loss(pred, target, mask, TINY.patch_size)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    model.zero_grad()
    # Only hidden patches count: changing visible target pixels' prediction does not change it.
    x = torch.rand(1, 1, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 8), (2, 2), 8), x)


def test_reconstruct_rejects_uneven_masks(model):
    mask = sample_mask(1, 2, 24, 0.9)
    mask[0, 1, (~mask[0, 1]).nonzero()[0]] = True  # hide one more patch in the second frame
    with pytest.raises(ValueError, match="same number of visible"):
        model.reconstruct(torch.rand(1, 2, 3, 32, 48), torch.rand(1, 2, 3, 32, 48), None, mask)


def test_reconstruct_with_visible_indices_traces_as_one_graph(model):
    # The training path passes the visible indices computed where the mask was sampled, so the
    # decoder path reads nothing back to the host: one graph, no breaks (a device sync on CUDA
    # and a graph cut on XLA otherwise).
    mask = sample_mask(1, 2, 24, 0.9, generator=torch.Generator().manual_seed(3))
    visible = visible_indices(mask)
    source, target = torch.rand(1, 2, 3, 32, 48), torch.rand(1, 2, 3, 32, 48)
    deltas = torch.tensor([[4, 9]])
    with torch.no_grad():
        eager = model.reconstruct(source, target, deltas, mask)
        # Passing them gives exactly what deriving them from the mask gives.
        assert torch.equal(model.reconstruct(source, target, deltas, mask, visible), eager)
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # dynamo on the lru_cache'd posenc
            traced = torch.compile(model.reconstruct, fullgraph=True, backend="eager")
            out = traced(source, target, deltas, mask, visible)
            torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
            with pytest.raises(torch._dynamo.exc.TorchDynamoException):  # it reads the host
                torch.compile(model.reconstruct, fullgraph=True, backend="eager")(
                    source, target, deltas, mask
                )
        torch._dynamo.reset()


def test_positional_encoding_is_resized_for_other_grids(model):
    base = model.tokenizer.posenc((16, 16), torch.device("cpu"))
    same = model.tokenizer.posenc((16, 16), torch.device("cpu"))
    other = model.tokenizer.posenc((4, 6), torch.device("cpu"))
    assert base.shape == (1, 256, 32) and other.shape == (1, 24, 32)
    torch.testing.assert_close(base, same)
    # Every row of the JAX-style weight matrix sums to one (outside taps renormalised).
    from rvm_core.model.vit import resize_weights

    for n_in, n_out in [(16, 20), (16, 4), (16, 7), (16, 40)]:
        np.testing.assert_allclose(resize_weights(n_in, n_out).sum(1), 1.0, atol=1e-12)


def test_single_source_frame_baseline():
    siam = build_model(TINY.replace(num_source=1), seed=0)
    mask = sample_mask(1, 2, 24, 0.9)
    out = siam.reconstruct(torch.rand(1, 1, 3, 32, 48), torch.rand(1, 2, 3, 32, 48), None, mask)
    assert out.shape == (1, 2, 3, 32, 48)


def test_attention_aggregator_same_budget_and_causal():
    gru = build_model(TINY.replace(core_layers=4), seed=0)
    attn = build_model(TINY.replace(core_layers=4, aggregator="attention"), seed=0).eval()
    n_gru, n_attn = count_parameters(gru)["core"], count_parameters(attn)["core"]
    assert abs(n_attn - n_gru) / n_gru < 0.02, (n_gru, n_attn)
    video = torch.rand(1, 6, 3, 32, 48)
    changed = video.clone()
    changed[:, 5] = 0.5
    with torch.no_grad():
        a, b = attn.encode_video(video), attn.encode_video(changed)
        state, steps = None, []
        for t in range(6):
            f, state = attn.step(video[:, t], state)
            steps.append(f)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(a, torch.stack(steps, 1), rtol=0, atol=1e-6)
    assert state.shape == (1, TINY.attention_window - 1, 25, 32)


def test_bf16_autocast_matches_fp32(model):
    video = torch.rand(1, 3, 3, 32, 48)
    with torch.no_grad():
        ref = model.encode_video(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_video(video)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1


def test_gelu_tanh_inference_form_matches_the_fused_op() -> None:
    """The in-place CPU inference form equals PyTorch's tanh GELU; autograd keeps the fused op."""
    import torch.nn.functional as F

    from rvm_core.model.blocks import gelu_tanh

    x = torch.randn(3, 257, 96, generator=torch.Generator().manual_seed(0)) * 4
    ref = F.gelu(x, approximate="tanh")
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            out = gelu_tanh(x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert out.data_ptr() != x.data_ptr()  # the input is not overwritten
    xg = x.clone().requires_grad_()
    gelu_tanh(xg).sum().backward()
    assert gelu_tanh(xg).grad_fn.name() == "GeluBackward0"
    ref_grad = torch.autograd.grad(F.gelu(xg, approximate="tanh").sum(), xg)[0]
    torch.testing.assert_close(xg.grad, ref_grad, rtol=0, atol=0)
