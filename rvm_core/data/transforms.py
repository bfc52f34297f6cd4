"""Spatial augmentation: one random resized crop + horizontal flip shared by all frames of a sample.

Sharing the crop keeps source and target frames geometrically consistent, so the model must
learn motion/correspondence rather than undo per-frame augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropConfig:
    """Random-resized-crop (MAE/torchvision style) + flip settings; size = output (H, W) px."""

    size: int | tuple[int, int] = 128
    scale: tuple[float, float] = (0.2, 1.0)  # crop area as a fraction of the frame area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    hflip_p: float = 0.5

    @property
    def hw(self) -> tuple[int, int]:
        """Output (H, W) in pixels."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)


@dataclass(frozen=True)
class CropParams:
    """A crop box (top, left, height, width in source pixels) and whether to flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_crop(rng: np.random.Generator, height: int, width: int, cfg: CropConfig) -> CropParams:
    """Draw a crop box for a frame of `height` x `width` px (torchvision RandomResizedCrop rule)."""
    area = height * width
    log_r = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (top, left, h, w)
            break
    if box is None:
        # fallback: central crop with the aspect clamped into `ratio` (as torchvision does)
        in_ratio = width / height
        if in_ratio < cfg.ratio[0]:
            w, h = width, round(width / cfg.ratio[0])
        elif in_ratio > cfg.ratio[1]:
            h, w = height, round(height * cfg.ratio[1])
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(rng.random() < cfg.hflip_p)
    return CropParams(*box, flip=flip)


def apply_crop(frames: np.ndarray, params: CropParams, out_hw: tuple[int, int]) -> np.ndarray:
    """Crop, resize, maybe flip uint8 [N,H,W,3] -> [N,out_h,out_w,3]; one box for all frames."""
    t, l, h, w = params.top, params.left, params.height, params.width
    shrink = out_hw[0] < h or out_hw[1] < w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((len(frames), out_hw[0], out_hw[1], 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        # cv2 reads the crop view directly; no copy of the full frame
        out[i] = cv2.resize(f[t : t + h, l : l + w], (out_hw[1], out_hw[0]), interpolation=interp)
    if params.flip:
        out = out[:, :, ::-1]
    return out
