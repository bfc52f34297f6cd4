"""Dense optical flow readouts with OpenCV DIS: a chained point tracker and mask propagation.

Numpy + OpenCV only (the ROS node may import this). Points: every frame, the flow prev -> cur
sampled at each point moves it; the flow cur -> prev sampled at the new position brings it back,
and a round trip error above ``fb_threshold`` px marks it occluded (an occluded point's flow is
its occluder's). Points keep following the flow while occluded: nothing remembers what a point
looked like, so there is no re-detection. Masks: the previous frame's soft labels are pulled
into the current frame along the flow cur -> prev (chained backward warps of the first mask).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from .channels import by_four_channels
from .lk import to_gray

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class DISConfig:
    """DIS flow settings: an OpenCV preset; ``fb_threshold`` in pixels of the input image."""

    preset: str = "medium"
    fb_threshold: float = 1.5  # forward-backward round trip error above this = occluded

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"DIS preset must be one of {sorted(PRESETS)}, got {self.preset!r}")


class DISFlow:
    """One OpenCV DIS instance: ``flow(a, b)`` -> [H,W,2] float32 with a(x) ~ b(x + flow(x))."""

    def __init__(self, config: DISConfig | None = None) -> None:
        self.config = config or DISConfig()
        self._dis = cv2.DISOpticalFlow_create(PRESETS[self.config.preset])

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dense flow from gray uint8 frame a [H,W] to b [H,W] (px)."""
        return self._dis.calc(a, b, None)


def sample_flow(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear sample of flow [H,W,2] at points [K,2] (x,y px, clamped to the frame) -> [K,2]."""
    h, w = flow.shape[:2]
    x = np.clip(points[:, 0], 0, w - 1)
    y = np.clip(points[:, 1], 0, h - 1)
    j = np.minimum(np.floor(x).astype(np.int64), w - 2)
    i = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = (x - j)[:, None], (y - i)[:, None]
    return (1 - fy) * ((1 - fx) * flow[i, j] + fx * flow[i, j + 1]) + fy * (
        (1 - fx) * flow[i + 1, j] + fx * flow[i + 1, j + 1]
    )


def dis_step(
    dis: DISFlow, prev: np.ndarray, cur: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move points [K,2] (x,y px) prev -> cur (gray uint8): (new [K,2], ok [K], fb error [K] px).

    ``ok`` is False for a round trip error above the threshold or a point outside the frame.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0)
    fwd = dis.flow(prev, cur)
    bwd = dis.flow(cur, prev)
    new = points + sample_flow(fwd, points)
    back = new + sample_flow(bwd, new)
    fb = np.linalg.norm(back - points, axis=1)
    h, w = prev.shape[:2]
    inside = (new[:, 0] >= 0) & (new[:, 0] <= w - 1) & (new[:, 1] >= 0) & (new[:, 1] <= h - 1)
    return new, (fb < dis.config.fb_threshold) & inside, fb


def warp_backward(soft: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull soft labels [H,W,L] of the previous frame into the current one along flow cur->prev."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = xs + flow[..., 0], ys + flow[..., 1]
    return by_four_channels(
        lambda part: cv2.remap(part, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
        soft,
        (h, w),
    )


class FlowMaskPropagator:
    """Streaming mask propagation by DIS flow: ``start(image, labels)``, then ``step(image)``."""

    def __init__(self, config: DISConfig | None = None) -> None:
        self.dis = DISFlow(config)
        self._gray: np.ndarray | None = None
        self._soft: np.ndarray | None = None

    def start(self, image: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> None:
        """Frame 0: image uint8 [H,W,3] (or gray), label ids [H,W] (0 = background)."""
        labels = np.asarray(labels)
        n = int(num_labels or labels.max() + 1)
        self._gray = to_gray(image)
        if self._gray.shape != labels.shape:
            raise ValueError(f"labels {labels.shape} and image {self._gray.shape} differ in size")
        self._soft = (labels[..., None] == np.arange(n)).astype(np.float32)

    def step_soft(self, image: np.ndarray) -> np.ndarray:
        """Next frame uint8 [H,W,3] -> soft labels [H,W,L] (one flow cur -> prev per frame)."""
        if self._soft is None:
            raise RuntimeError("call start() with the first frame and its labels first")
        gray = to_gray(image)
        self._soft = warp_backward(self._soft, self.dis.flow(gray, self._gray))
        self._gray = gray
        return self._soft

    def step(self, image: np.ndarray) -> np.ndarray:
        """Next frame -> label ids [H,W] int64."""
        return self.step_soft(image).argmax(-1)


def propagate_flow(
    frames: Iterable[np.ndarray],
    first_labels: np.ndarray,
    config: DISConfig | None = None,
    num_labels: int | None = None,
) -> np.ndarray:
    """Offline: frames uint8 [H,W,3] (frame 0 first), first labels [H,W] -> ids [T,H,W]."""
    prop = FlowMaskPropagator(config)
    it = iter(frames)
    prop.start(next(it), first_labels, num_labels)
    out = [np.asarray(first_labels).astype(np.int64)]
    out.extend(prop.step(f) for f in it)
    return np.stack(out)
