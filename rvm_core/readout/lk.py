"""Pyramidal Lucas-Kanade primitives with a forward-backward check (numpy + OpenCV, no torch).

Used by ``PointTracker`` for ``method='lk'`` (the classical baseline) and ``method='hybrid'``
(LK for precise local motion, features for drift correction, occlusion and re-detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LKConfig:
    """OpenCV pyramidal LK settings; ``fb_threshold`` in pixels of the input image."""

    win_size: int = 21
    max_level: int = 3
    iterations: int = 30
    epsilon: float = 0.01
    fb_threshold: float = 1.5  # forward-backward round trip error above this = lost / occluded


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H,W,3] (or already gray [H,W]) -> gray uint8 [H,W]."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image, dtype=np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def lk_step(
    prev: np.ndarray, cur: np.ndarray, points: np.ndarray, config: LKConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track points [K,2] (x,y px) prev->cur: (new points [K,2], ok [K] bool, fb error [K] px).

    ``prev``/``cur`` are gray uint8 [H,W] frames (``to_gray``): OpenCV 5's Python binding no
    longer accepts prebuilt pyramids, so calcOpticalFlowPyrLK builds the levels itself.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)
    k = points.shape[0]
    if k == 0:
        return np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0)
    win = (config.win_size, config.win_size)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, config.iterations, config.epsilon)
    kw = dict(winSize=win, maxLevel=config.max_level, criteria=criteria)
    fwd, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, points, None, **kw)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, fwd, None, **kw)
    fb = np.linalg.norm((back - points).reshape(k, 2), axis=1).astype(np.float64)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < config.fb_threshold)
    fb[(st1.ravel() == 0) | (st2.ravel() == 0)] = np.inf
    return fwd.reshape(k, 2).astype(np.float64), ok, fb
