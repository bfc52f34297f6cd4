"""Dense feature sources for the readouts: an RVM model, its tokenizer alone, or a baseline.

Every source is a callable frame uint8 [H,W,3] RGB -> features [h,w,C] float32 with ``grid_hw``
and ``reset()``, fed one frame at a time (only ``ModelFeatures`` keeps state between frames).
The grid covers the frame uniformly: cell (i, j) is centred at pixel
((j + 0.5) W / w - 0.5, (i + 0.5) H / h - 0.5), as the readouts assume. Only the model sources
need torch (imported lazily).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def resample_grid(features: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Features [h,w,C] -> [gh,gw,C] float32: bilinear with half-pixel centres, antialiased down.

    Same cell-centre convention as the readouts, so a cell keeps its place in the image.
    """
    if features.shape[:2] == tuple(grid_hw):
        return np.asarray(features, np.float32)
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, np.float32)).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(
        x, size=tuple(grid_hw), mode="bilinear", align_corners=False, antialias=True
    )
    return y[0].permute(1, 2, 0).contiguous().numpy()


def _check_grid(grid_hw: tuple[int, int], what: str) -> tuple[int, int]:
    h, w = (int(v) for v in grid_hw)
    if h < 2 or w < 2:  # the readouts interpolate between cells
        raise ValueError(f"{what} grid must be at least 2x2, got {h}x{w}")
    return h, w


def _check_fits(grid_hw: tuple[int, int], frame_hw: tuple[int, int], what: str) -> None:
    h, w = grid_hw
    if h > frame_hw[0] or w > frame_hw[1]:
        raise ValueError(
            f"{what} grid {h}x{w} is finer than the {frame_hw[1]}x{frame_hw[0]} frame's pixels"
        )


class PixelFeatures:
    """Raw-pixel-patch baseline: each grid cell is its patch downsampled to cell x cell RGB."""

    def __init__(self, grid_hw: tuple[int, int] = (16, 16), cell: int = 8) -> None:
        self.grid_hw = _check_grid(grid_hw, "pixels")
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


class SiftFeatures:
    """Dense SIFT (OpenCV): one upright descriptor per grid cell, computed at the cell's centre.

    The keypoint size (OpenCV's diameter of the keypoint's neighbourhood) is ``scale`` times
    the cell size in frame pixels, so the descriptor's scale follows the grid. Deterministic.
    """

    def __init__(self, grid_hw: tuple[int, int], scale: float = 1.0) -> None:
        if not hasattr(cv2, "SIFT_create"):
            raise ValueError(f"OpenCV {cv2.__version__} has no SIFT (needs OpenCV >= 4.4)")
        self.grid_hw = _check_grid(grid_hw, "sift")
        self.scale = float(scale)
        self._sift = cv2.SIFT_create()
        self._keypoints: dict[tuple[int, int], list] = {}

    def reset(self) -> None:
        """Stateless; present for interface parity with ``ModelFeatures``."""

    def keypoints(self, frame_hw: tuple[int, int]) -> list:
        """The cell-centre keypoints for a frame size (cached per size)."""
        if frame_hw not in self._keypoints:
            _check_fits(self.grid_hw, frame_hw, "sift")
            (h, w), (fh, fw) = self.grid_hw, frame_hw
            size = self.scale * 0.5 * (fh / h + fw / w)
            ys = (np.arange(h) + 0.5) * fh / h - 0.5
            xs = (np.arange(w) + 0.5) * fw / w - 0.5
            # angle 0: upright descriptors (no orientation assignment), as dense SIFT is used.
            self._keypoints[frame_hw] = [
                cv2.KeyPoint(float(x), float(y), float(size), 0.0) for y in ys for x in xs
            ]
        return self._keypoints[frame_hw]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame uint8 [H,W,3] RGB -> [h,w,128] float32 SIFT descriptors."""
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        kps = self.keypoints(gray.shape[:2])
        out, desc = self._sift.compute(gray, kps)
        if desc is None or len(out) != len(kps):
            raise ValueError(f"SIFT kept {len(out)} of {len(kps)} cell keypoints")
        return desc.astype(np.float32).reshape(*self.grid_hw, -1)


def _check_size(model: Any, size: tuple[int, int]) -> None:
    p = model.config.patch_size
    if size[0] % p or size[1] % p:
        raise ValueError(f"size {size} is not a multiple of the patch size {p}")


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
        _check_size(model, self.size)
        self.grid_hw = model.feature_grid(self.size)
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


class TokenizerFeatures:
    """The model's tokenizer alone (its front end, no encoder or core): tokens as features.

    ``model.tokenizer`` output [N,D] (what the encoder receives, so its fixed positional
    encoding included) on the tokenizer's own grid (input size / tokenizer stride), resampled
    to ``grid_hw`` (default: the model's feature grid) by ``resample_grid`` when they differ.
    """

    def __init__(
        self,
        model: Any,
        size: tuple[int, int] | None = None,
        device: str = "cpu",
        grid_hw: tuple[int, int] | None = None,
    ) -> None:
        import torch

        tokenizer = getattr(model, "tokenizer", None)
        stride = getattr(getattr(tokenizer, "patch_embedding", None), "patch_size", None)
        if stride is None:
            raise ValueError(f"{type(model).__name__} has no patch tokenizer to read features from")
        self._torch = torch
        self.model = model.eval()
        self.size = tuple(size or model.config.image_size)
        if self.size[0] % stride or self.size[1] % stride:
            raise ValueError(f"size {self.size} is not a multiple of the tokenizer stride {stride}")
        self.token_grid = (self.size[0] // stride, self.size[1] // stride)
        self.grid_hw = _check_grid(grid_hw or model.feature_grid(self.size), "tokenizer")
        self.device = device

    def reset(self) -> None:
        """Stateless; present for interface parity with ``ModelFeatures``."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame uint8 [H,W,3] RGB -> tokens [h,w,D] float32 on ``grid_hw``."""
        from ..preprocess import to_model_input

        torch = self._torch
        with torch.inference_mode():
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(frame))[None], self.size)
            tokens = self.model.tokenizer(x.to(self.device))
        f = tokens[0].float().cpu().numpy().reshape(*self.token_grid, -1)
        return resample_grid(f, self.grid_hw)
