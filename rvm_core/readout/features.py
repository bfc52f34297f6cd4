"""Dense feature sources for the readouts: a streaming RVM model, or raw pixel patches.

Both are callables frame uint8 [H,W,3] -> features [h,w,C] float32, kept stateful so they can
be fed one frame at a time. Only ``ModelFeatures`` needs torch (imported lazily).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


class PixelFeatures:
    """Raw-pixel-patch baseline: each grid cell is its patch downsampled to cell x cell RGB."""

    def __init__(self, grid_hw: tuple[int, int] = (16, 16), cell: int = 8) -> None:
        self.grid_hw = grid_hw
        self.cell = cell

    def reset(self) -> None:
        """Stateless; present for interface parity with ``ModelFeatures``."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame uint8 [H,W,3] -> [h,w,cell*cell*3] float32, each patch zero-mean (NCC-like)."""
        h, w = self.grid_hw
        c = self.cell
        small = cv2.resize(frame, (w * c, h * c), interpolation=cv2.INTER_AREA).astype(np.float32)
        patches = small.reshape(h, c, w, c, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, -1)
        # Zero-mean patches make cosine similarity a normalised cross-correlation.
        return patches - patches.mean(axis=-1, keepdims=True)


class ModelFeatures:
    """Streaming RVM features: one ``model.step`` per frame -> patch features [h,w,D] float32.

    The first frame after construction or ``reset`` is stepped ``1 + warmup`` times (warm start,
    ``RVMConfig.warmup_steps`` by default), as the runtime does.
    """

    def __init__(
        self,
        model: Any,
        size: tuple[int, int] | None = None,
        device: str = "cpu",
        warmup: int | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.size = tuple(size or model.config.image_size)
        p = model.config.patch_size
        if self.size[0] % p or self.size[1] % p:
            raise ValueError(f"size {self.size} is not a multiple of the patch size {p}")
        self.grid_hw = (self.size[0] // p, self.size[1] // p)
        self.device = device
        self.warmup = model.config.warmup_steps if warmup is None else int(warmup)
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        self.state = None

    def reset(self) -> None:
        """Start a new video (zero recurrent state)."""
        self.state = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame uint8 [H,W,3] RGB -> features [h,w,D] (CLS dropped, patches row-major)."""
        from ..preprocess import to_model_input

        torch = self._torch
        with torch.inference_mode():
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(frame))[None], self.size)
            x = x.to(self.device)
            steps = 1 + (self.warmup if self.state is None else 0)  # the warm start
            for _ in range(steps):
                feats, self.state = self.model.step(x, self.state)
        h, w = self.grid_hw
        return feats[0, 1:].float().cpu().numpy().reshape(h, w, -1)
