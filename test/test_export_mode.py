"""Export mode: the flags the modules read while traced, and that their export branches compute
what the eager paths do."""

from __future__ import annotations

import pytest
import torch

from rvm_core.checkpoint import build_model
from rvm_core.model import export_mode

SMALL = dict(
    patch_size=8,
    width=32,
    enc_layers=1,
    enc_heads=2,
    enc_mlp=64,
    core_layers=1,
    core_heads=2,
    core_mlp=64,
    dec_layers=0,
    image_size=(32, 32),
)


def test_exporting_sets_the_flags_and_restores_them() -> None:
    assert not export_mode.is_exporting() and not export_mode.use_contrib_attention()
    with export_mode.exporting(contrib_attention=True):
        assert export_mode.is_exporting() and export_mode.use_contrib_attention()
        with export_mode.exporting():
            assert export_mode.is_exporting() and not export_mode.use_contrib_attention()
        assert export_mode.use_contrib_attention()
    with pytest.raises(RuntimeError), export_mode.exporting(contrib_attention=True):
        raise RuntimeError
    assert not export_mode.is_exporting() and not export_mode.use_contrib_attention()


@pytest.mark.parametrize("aggregator", ["gru", "attention"])
def test_export_branches_compute_the_eager_step(aggregator: str) -> None:
    model = build_model("tiny", seed=0, aggregator=aggregator, **SMALL).eval()
    frames = torch.rand(3, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def stream() -> list[torch.Tensor]:
        state, out = None, []
        with torch.no_grad():
            for frame in frames:
                features, state = model.step(frame, state)
                out.append(features)
        return out

    eager = stream()
    with export_mode.exporting(contrib_attention=True):
        exported = stream()
    for a, b in zip(eager, exported):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
