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


def step_flops(config: RVMConfig, grid: tuple[int, int] | None = None) -> dict[str, int]:
    """FLOPs of one step at token ``grid`` (h, w; default the config's): per part and total."""
    h, w = grid or config.grid
    p, d = config.patch_size, config.width
    n = h * w
    t = 1 + n  # tokens incl. CLS
    patch = 2 * n * (3 * p * p) * d
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
    return {"patch_embed": patch, "encoder": encoder, "core": core, "total": patch + encoder + core}
