"""Temporal aggregators: the Transformer-GRU recurrent core and the self-attention ablation."""

from __future__ import annotations

import torch
from torch import nn

from . import export_mode
from .blocks import CrossAttentionTransformer


class GatedTransformerCore(nn.Module):
    """Transformer-GRU core: folds encoded frame x [B,1+N,D] into state s [B,1+N,D].

    u = sigmoid(x W_iu + s W_su), r = sigmoid(x W_ir + s W_sr),
    h = Tx(query=x, kv=r * LN_s(s)), s' = (1 - u) * s + u * h; the frame's features are s'.
    """

    def __init__(self, dim: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.input_update = nn.Linear(dim, dim, bias=False)
        self.input_reset = nn.Linear(dim, dim, bias=False)
        self.state_update = nn.Linear(dim, dim, bias=False)
        self.state_reset = nn.Linear(dim, dim, bias=False)
        # eps 1e-4 and no bias, as in the released model.
        self.state_layer_norm = nn.LayerNorm(dim, eps=1e-4, bias=False)
        self.transformer = CrossAttentionTransformer(dim, layers, heads, mlp)

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        """Zero state shaped like one encoded frame [B,1+N,D]."""
        return torch.zeros_like(x)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B,1+N,D], s [B,1+N,D]) -> (features [B,1+N,D], new state [B,1+N,D])."""
        s = state.to(x.dtype)
        update = torch.sigmoid(self.input_update(x) + self.state_update(s))
        reset = torch.sigmoid(self.input_reset(x) + self.state_reset(s))
        h = self.transformer(x, reset * self.state_layer_norm(s))
        if export_mode.is_exporting():
            # An exported graph keeps the state float32 around a lower-precision core: gates and
            # transformer run in x's dtype, the blend in float32 (the state is fed back every
            # frame, and rounding it to float16 each time accumulates over a stream).
            update, h, state = update.float(), h.float(), state.float()
        state = (1 - update) * state + update * h
        return state, state


class AttentionAggregator(nn.Module):
    """Ablation: the current frame cross-attends to itself and the previous K-1 encoded frames.

    The state is a FIFO of the last K-1 encoded frames [B,K-1,1+N,D] (all-zero slots are empty
    and masked out), so cost grows with K instead of staying constant. The MLPs are widened so
    the parameter count matches the recurrent core's (its four D x D gate matrices).
    """

    def __init__(self, dim: int, layers: int, heads: int, mlp: int, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"attention_window must be >= 1, got {window}")
        self.window = window
        extra = round(2 * dim / layers)  # 4 D^2 gate weights spread over the blocks' MLPs
        self.time_embedding = nn.Parameter(torch.zeros(window, dim))
        self.transformer = CrossAttentionTransformer(dim, layers, heads, mlp + extra)
        nn.init.normal_(self.time_embedding, std=0.02)

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        """Empty history [B,K-1,1+N,D]."""
        return x.new_zeros(x.shape[0], self.window - 1, *x.shape[1:])

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B,1+N,D], history [B,K-1,1+N,D]) -> (features [B,1+N,D], new history)."""
        frames = torch.cat([state, x.unsqueeze(1)], dim=1)  # [B,K,1+N,D], oldest first
        b, k, n, d = frames.shape
        valid = frames.abs().amax(dim=-1) > 0  # [B,K,1+N]
        kv = (frames + self.time_embedding.view(1, k, 1, d)).reshape(b, k * n, d)
        mask = valid.reshape(b, 1, 1, k * n)
        features = self.transformer(x, kv, mask)
        return features, frames[:, 1:]
