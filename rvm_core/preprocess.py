"""The one image conversion of the project: uint8 HWC camera frames -> model input."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"256x256"``) into (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 256x256), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


def to_model_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images [B,H,W,3] RGB -> float [B,3,h,w] in [0,1], bilinearly resized to ``size``.

    The ONNX export runs this same function inside the graph, so PyTorch and the runtime see
    identical inputs.
    """
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x
