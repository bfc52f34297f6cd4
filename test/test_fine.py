"""The fine feature head: features at half the patch stride from a stride-16 state."""

from __future__ import annotations

import torch

from rvm_core.checkpoint import build_model

FINE = dict(
    stem="mobilenetv2",
    patch_size=16,
    fine_features=True,
    width=32,
    enc_layers=1,
    enc_heads=2,
    enc_mlp=64,
    core_layers=1,
    core_heads=2,
    core_mlp=64,
    fine_mlp=64,
    dec_layers=0,
    image_size=(64, 96),
)


def _model(seed: int = 0) -> torch.nn.Module:
    return build_model("tiny", seed=seed, **FINE).eval()


def test_grid_shapes_and_streaming_equals_stepping() -> None:
    """A 64x96 frame gives a 4x6 state and an 8x12 feature grid; a video streamed at once
    equals stepping its frames one by one (the same features, frame t from frames <= t)."""
    m = _model()
    assert m.feature_grid((64, 96)) == (8, 12) and m.config.feature_stride == 8
    video = torch.rand(1, 5, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.fine.state.weight.normal_(0, 0.1)  # as after training: the state reaches the output
        streamed = m.encode_video(video)
        state, stepped = None, []
        for t in range(5):
            f, state = m.step(video[:, t], state)
            stepped.append(f)
    assert streamed.shape == (1, 5, 1 + 8 * 12, 32) and state.shape == (1, 1 + 4 * 6, 32)
    torch.testing.assert_close(streamed, torch.stack(stepped, 1), atol=1e-5, rtol=1e-5)


def test_untrained_head_passes_the_stem_through() -> None:
    """At initialisation the state branch is zero: features depend on the frame only, so an
    untrained model's fine features start as (a projection of) its stem's stride-8 map."""
    m = _model()
    frame = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        x, skip = m._encode(frame)
        a = m._features(torch.randn_like(x), skip)
        b = m._features(torch.randn_like(x), skip)
        m.fine.state.weight.normal_(0, 0.1)
        c = m._features(torch.randn_like(x), skip)
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert (a[:, 1:] - c[:, 1:]).abs().max() > 1e-3


def test_decoder_trains_the_head() -> None:
    """The reconstruction loss reaches the skip projection and the (zero-started) state branch."""
    from rvm_core.model.decoder import sample_mask, visible_indices
    from rvm_core.model.rvm import reconstruction_loss

    m = build_model("tiny", seed=0, **{**FINE, "dec_layers": 1, "dec_width": 32, "dec_heads": 2})
    src, tgt = torch.rand(2, 4, 3, 64, 96), torch.rand(2, 4, 3, 64, 96)
    mask = sample_mask(2, 4, 24, 0.75)
    pred = m(src, tgt, torch.full((2, 4), 6), mask, visible_indices(mask))
    reconstruction_loss(pred, tgt, mask, 16).backward()
    assert m.fine.skip.weight.grad.abs().sum() > 0
    assert m.fine.state.weight.grad.abs().sum() > 0
