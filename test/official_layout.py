"""A random-weight checkpoint in the official representations4d key layout, built from the spec.

Written from ``shared/reference/official-rvm.md`` and the released RVM-S key list, independently
of ``rvm_core``'s own module names, so a loader bug cannot hide behind a shared mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OfficialSizes:
    width: int = 32
    patch: int = 16
    enc_layers: int = 2
    enc_heads: int = 2
    enc_mlp: int = 64
    core_layers: int = 2
    core_heads: int = 4
    core_mlp: int = 48
    dec_width: int = 24
    dec_layers: int = 2
    dec_heads: int = 3
    dec_mlp: int = 40
    num_deltas: int = 64


S_SIZES = OfficialSizes(384, 16, 12, 6, 1536, 4, 8, 2048, 512, 8, 16, 2048)


def official_shapes(s: OfficialSizes) -> dict[str, tuple[int, ...]]:
    """Every key of an official RVM checkpoint with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, dim: int, bias: bool = True) -> None:
        shapes[f"{prefix}/scale"] = (dim,)
        if bias:
            shapes[f"{prefix}/bias"] = (dim,)

    def dense(prefix: str, din: int, dout: int) -> None:
        shapes[f"{prefix}/kernel"] = (din, dout)
        shapes[f"{prefix}/bias"] = (dout,)

    def attention(prefix: str, dim: int, heads: int) -> None:
        for proj in ("query", "key", "value"):
            shapes[f"{prefix}/{proj}/kernel"] = (dim, heads, dim // heads)
            shapes[f"{prefix}/{proj}/bias"] = (heads, dim // heads)
        shapes[f"{prefix}/out/kernel"] = (heads, dim // heads, dim)
        shapes[f"{prefix}/out/bias"] = (dim,)

    def mlp(prefix: str, dim: int, hidden: int) -> None:
        dense(f"{prefix}/dense_in", dim, hidden)
        dense(f"{prefix}/dense_out", hidden, dim)

    def xa_block(prefix: str, dim: int, heads: int, hidden: int) -> None:
        for name in ("attention", "ca_attention"):
            attention(f"{prefix}/{name}", dim, heads)
            norm(f"{prefix}/{name}_norm", dim)
        mlp(f"{prefix}/mlp", dim, hidden)
        norm(f"{prefix}/mlp_norm", dim)

    d = s.width
    shapes["cls_token"] = (1, d)
    shapes["tokenizer/patch_embedding/Conv_0/kernel"] = (1, s.patch, s.patch, 3, d)
    shapes["tokenizer/patch_embedding/Conv_0/bias"] = (d,)
    for i in range(s.enc_layers):
        attention(f"encoder/layers_{i}/attention", d, s.enc_heads)
        norm(f"encoder/layers_{i}/attention_norm", d)
        mlp(f"encoder/layers_{i}/mlp", d, s.enc_mlp)
        norm(f"encoder/layers_{i}/mlp_norm", d)
    norm("encoder/LayerNorm_0", d)
    for gate in ("input_reset", "input_update", "state_reset", "state_update"):
        shapes[f"rnn_core/{gate}/kernel"] = (d, d)
    norm("rnn_core/state_layer_norm", d, bias=False)
    for i in range(s.core_layers):
        xa_block(f"rnn_core/transformer/xa_blocks_{i}", d, s.core_heads, s.core_mlp)
    norm("rnn_core/transformer/output_norm", d)
    if s.dec_layers:
        w = s.dec_width
        shapes["mask_token"] = (1, w)
        dense("decoder_embedder", d, w)
        dense("delta_embedder", s.num_deltas, w)
        for i in range(s.dec_layers):
            xa_block(f"decoder/xa_blocks_{i}", w, s.dec_heads, s.dec_mlp)
        norm("decoder/output_norm", w)
        dense("detokenizer/Dense_0", w, s.patch * s.patch * 3)
    return shapes


def make_official_checkpoint(s: OfficialSizes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights for every official key: scaled normals, LN scales near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in sorted(official_shapes(s).items()):
        if key.endswith("/scale"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key.endswith("/bias") or key in ("cls_token", "mask_token"):
            value = 0.05 * rng.standard_normal(shape)
        else:
            qkv = key.endswith(("query/kernel", "key/kernel", "value/kernel"))
            fan_in = shape[0] if qkv else int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[key] = value.astype(np.float32)
    return out
