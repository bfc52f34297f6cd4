"""Per-frame ViT encoder: patch embedding, fixed sin/cos positions (JAX-bicubic resized), blocks."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from .blocks import PreNormBlock, layer_norm
from .stem import ConvPatchEmbedding


def sincos_table(n_positions: int, dim: int) -> np.ndarray:
    """MAE 1-D sin/cos table [n_positions, dim] (float64): sin on even, cos on odd channels."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000.0, 2 * (j // 2) / dim)
    return np.where(j % 2 == 0, np.sin(angles), np.cos(angles))


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (JAX's 'bicubic'; PyTorch uses a = -0.75)."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, far, near))


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] matrix of ``jax.image.resize(method='bicubic', antialias=True)`` in 1-D.

    Half-pixel centres; when downsampling the kernel is widened by the scale (antialiasing);
    taps outside the input get no weight and each row is renormalised to sum to 1.
    """
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0)
    sample = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5  # input coordinates
    dist = np.abs(sample[:, None] - np.arange(in_size, dtype=np.float64)[None, :]) / kernel_scale
    weights = _keys_cubic(dist)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, weights / total, 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return weights * inside[:, None]


@functools.lru_cache(maxsize=32)
def patch_posenc(base: tuple[int, int], grid: tuple[int, int], dim: int) -> np.ndarray:
    """Encoder positional encoding [h*w, dim] float32 for a token grid, resized from ``base``."""
    bh, bw = base
    table = sincos_table(bh * bw, dim).reshape(bh, bw, dim)
    h, w = grid
    if (h, w) != (bh, bw):
        table = np.einsum("yi,ijd->yjd", resize_weights(bh, h), table)
        table = np.einsum("xj,yjd->yxd", resize_weights(bw, w), table)
    return table.reshape(h * w, dim).astype(np.float32)


def cached_constant(
    cache: dict[tuple, torch.Tensor], key: tuple, make: Any, device: torch.device
) -> torch.Tensor:
    """``make()`` (a numpy array) as a tensor on ``device``, built once per ``key``.

    Copying the table from host memory on every call would be a blocking copy per step on a
    GPU and cannot be captured in a CUDA graph. Built outside inference mode, so a model first
    run under ``torch.inference_mode`` can still train.
    """
    table = cache.get(key)
    if table is None:
        with torch.inference_mode(False):
            table = cache[key] = torch.from_numpy(np.ascontiguousarray(make())).to(device)
    return table


class PatchEmbedding(nn.Module):
    """Non-overlapping p x p patches -> tokens: [B,3,H,W] -> [B,h*w,D] (row-major)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Frames -> (tokens, None): a linear embedding has no stride-8 activations."""
        return self(frames), None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(frames).flatten(2).transpose(1, 2)


class Tokenizer(nn.Module):
    """Patch embedding plus the fixed sin/cos positional encoding: [B,3,H,W] -> [B,N,D]."""

    def __init__(
        self, patch_size: int, dim: int, posenc_grid: tuple[int, int], stem: str = "patch"
    ) -> None:
        super().__init__()
        if stem == "patch":
            self.patch_embedding: nn.Module = PatchEmbedding(patch_size, dim)
        else:
            self.patch_embedding = ConvPatchEmbedding(dim, patch_size)
        self.posenc_grid = tuple(posenc_grid)
        self.dim = dim
        self._posenc: dict[tuple, torch.Tensor] = {}

    def posenc(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Positional encoding [1, h*w, D] for a token grid (a constant; not a parameter)."""
        return cached_constant(
            self._posenc,
            (tuple(grid), str(device)),
            lambda: patch_posenc(self.posenc_grid, tuple(grid), self.dim)[None],
            device,
        )

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames [B,3,H,W] -> (tokens [B,N,D] with positions, the conv stem's stride-8
        activations [B,32,H/8,W/8] or None for the linear patch embedding)."""
        p = self.patch_embedding.patch_size
        # Plain ints: the table is a constant per grid (ONNX tracing would give tensors here).
        grid = (int(frames.shape[-2]) // p, int(frames.shape[-1]) // p)
        tokens, skip = self.patch_embedding.encode(frames)
        return tokens + self.posenc(grid, tokens.device).to(tokens.dtype), skip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)[0]


class Encoder(nn.Module):
    """Pre-LN ViT over one frame's tokens (CLS first): [B,1+N,D] -> [B,1+N,D]."""

    def __init__(self, dim: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PreNormBlock(dim, heads, mlp) for _ in range(layers))
        self.norm = layer_norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
