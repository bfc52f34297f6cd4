"""The one image conversion of the project: uint8 HWC camera frames -> model input.

Downscaling averages each output pixel's footprint (OpenCV's ``INTER_AREA``, which the training
crops use too); upscaling is bilinear with half-pixel centres (``INTER_LINEAR``). Both are
separable constant matrices, so the ONNX graph runs exactly the same arithmetic as PyTorch.
This module imports torch only inside :func:`to_model_input`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"256x256"``) into (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 256x256), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float32 weights resizing one axis: area average down, bilinear up."""
    weights = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if n_out < n_in:  # each output pixel averages the input interval it covers
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                weights[i, j] = min(hi, j + 1) - max(lo, j)
        weights /= scale
    else:
        src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        frac = src - j0
        rows = np.arange(n_out)
        np.add.at(weights, (rows, j0), 1 - frac)
        np.add.at(weights, (rows, j1), frac)
    return weights.astype(np.float32)


def to_model_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [B,H,W,3] RGB -> float [B,3,h,w] in [0,1], resized to ``size`` (h, w).

    The ONNX export runs this same function inside the graph, so PyTorch and the runtime see
    identical inputs.
    """
    import torch

    # Cast before the transpose: TensorRT takes a uint8 input only when it feeds a Cast
    # directly (NVIDIA/TensorRT#3985), so the exported graph starts image -> Cast.
    x = images.float().permute(0, 3, 1, 2) / 255.0
    h_in, w_in = int(x.shape[-2]), int(x.shape[-1])
    if (h_in, w_in) == tuple(size):
        return x
    wy = torch.from_numpy(resize_matrix(h_in, size[0])).to(x.device)
    wx = torch.from_numpy(resize_matrix(w_in, size[1])).to(x.device)
    return torch.matmul(torch.matmul(wy, x), wx.T)  # [h,H] @ [B,3,H,W] @ [W,w]
