"""Analytic FLOPs (2 x multiply-accumulates) of one streaming step: encoder + recurrent core.

Counted: the patch embedding, every projection and MLP matmul, and the attention products
(QK^T and AV). Ignored: the input resize, norms, softmax, GELU, gates' sigmoids and other
elementwise work (a few percent at most). The decoder is not part of a streaming step.
"""

from __future__ import annotations

from .config import RVMConfig


def _attention(nq: int, nk: int, d: int) -> int:
    """Projections (q from nq tokens, k/v from nk, out) plus QK^T and AV."""
    return 2 * (nq * d * d + 2 * nk * d * d + nq * d * d) + 2 * 2 * nq * nk * d


def _mlp(n: int, d: int, hidden: int) -> int:
    return 2 * 2 * n * d * hidden


def _mobilenetv2_stem(h: int, w: int, d: int, stride: int) -> int:
    """The conv stem of ``model/stem.py`` for an output grid h x w (input stride*h x stride*w)."""
    from .model.stem import _FIRST_CHANNELS, stem_settings

    pixels = (stride * h) * (stride * w) // 4  # after the first stride-2 conv
    flops = 2 * pixels * 27 * _FIRST_CHANNELS
    cin = _FIRST_CHANNELS
    for t, c, n, s in stem_settings(stride):
        for i in range(n):
            hidden = cin * t
            expand = 2 * pixels * cin * hidden if t != 1 else 0
            pixels //= (s * s) if i == 0 else 1
            flops += expand + 2 * pixels * hidden * 9 + 2 * pixels * hidden * c
            cin = c
    return flops + 2 * h * w * cin * d


def _fine_head(h: int, w: int, d: int, mlp: int) -> int:
    """``model/fine.py`` from an h x w state to a 2h x 2w grid: projections and the MLP."""
    from .model.stem import SKIP_CHANNELS

    n = 4 * h * w
    return 2 * h * w * d * d + 2 * n * SKIP_CHANNELS * d + _mlp(n, d, mlp)


def step_flops(config: RVMConfig, grid: tuple[int, int] | None = None) -> dict[str, int]:
    """FLOPs of one step at token ``grid`` (h, w; default the config's): per part and total."""
    h, w = grid or config.grid
    p, d = config.patch_size, config.width
    n = h * w
    t = 1 + n  # tokens incl. CLS
    if config.stem == "patch":
        patch = 2 * n * (3 * p * p) * d
    else:
        patch = _mobilenetv2_stem(h, w, d, p)
    encoder = config.enc_layers * (_attention(t, t, d) + _mlp(t, d, config.enc_mlp))
    if config.aggregator == "gru":
        gates = 4 * 2 * t * d * d  # input/state x update/reset, D x D each, no bias
        kv, mlp = t, config.core_mlp
    else:  # attention ablation: kv is the window of K frames; MLPs widened (see core.py)
        gates = 0
        kv = config.attention_window * t
        mlp = config.core_mlp + round(2 * d / config.core_layers)
    block = _attention(t, kv, d) + _mlp(t, d, mlp) + _attention(t, t, d)
    core = gates + config.core_layers * block
    fine = _fine_head(h, w, d, config.fine_mlp) if config.fine_features else 0
    total = patch + encoder + core + fine
    return {"patch_embed": patch, "encoder": encoder, "core": core, "fine": fine, "total": total}
