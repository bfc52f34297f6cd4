"""Fine feature head: the recurrent state at stride p, fused with the stem's stride-p/2 map.

A dense state at stride 16 costs a quarter of the attention tokens of one at stride 8, but a
16-pixel cell is too coarse for masks and tracks. The head upsamples the state 2x and adds a
projection of the frame's own stride-8 activations (MobileNetV2 blocks 0-6), then mixes the two
with one pre-norm MLP, so every output cell carries both the state's temporal context and the
frame's local detail. It is trained end to end by the paper's loss: the decoder reconstructs the
targets from these features, so detail the targets need must survive in them.

The state branch and the MLP's output start at zero (``reset_parameters``), so an untrained
head passes a random projection of the stem's activations through (which keeps their cosine
geometry) and training adds only what the loss finds useful, instead of starting from noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import layer_norm


class FineHead(nn.Module):
    """State [B,1+N,D] on an (h, w) grid + activations [B,C,2h,2w] -> features [B,1+4N,D]."""

    def __init__(self, dim: int, skip_channels: int, mlp: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(skip_channels, dim, kernel_size=1)
        self.state = nn.Linear(dim, dim)
        self.pre_norm = layer_norm(dim)
        self.dense_in = nn.Linear(dim, mlp)
        self.dense_out = nn.Linear(mlp, dim)
        self.norm = layer_norm(dim)

    def reset_parameters(self) -> None:
        """Zero the state branch and the MLP output: the untrained head is the skip path."""
        for layer in (self.state, self.dense_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, state: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        b, _, d = state.shape
        h, w = int(skip.shape[-2]), int(skip.shape[-1])
        coarse = self.state(state[:, 1:]).transpose(1, 2).reshape(b, d, h // 2, w // 2)
        up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        x = (up + self.skip(skip.to(up.dtype))).flatten(2).transpose(1, 2)  # [B,4N,D]
        x = x + self.dense_out(F.gelu(self.dense_in(self.pre_norm(x))))
        return torch.cat([state[:, :1], self.norm(x)], dim=1)
