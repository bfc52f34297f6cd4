"""OpenCV filters over arrays with any number of channels (OpenCV takes at most 4 at a time)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def by_four_channels(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, hw: tuple[int, int]
) -> np.ndarray:
    """``fn`` on x [h,w,C] four channels at a time -> [H,W,C] (hw = (H, W), x's dtype)."""
    out = np.empty((hw[0], hw[1], x.shape[-1]), x.dtype)
    for c0 in range(0, x.shape[-1], 4):
        out[..., c0 : c0 + 4] = fn(np.ascontiguousarray(x[..., c0 : c0 + 4])).reshape(*hw, -1)
    return out
