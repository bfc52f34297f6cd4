"""Mask tracking for one camera: a seed label image propagated frame to frame.

Two readouts (numpy + OpenCV), chosen by ``masks.method``: ``dis`` warps the soft labels along
DIS optical flow (:class:`rvm_core.readout.FlowMaskPropagator`, the real-time default);
``features`` propagates them by feature nearest neighbours
(:class:`rvm_core.readout.LabelPropagator`) and leaves the feature grid by a guided filter with
the camera frame as guide: better masks on the synthetic benchmark, about 10x the cost per
frame on the default's 30x40 grid (README "Performance"). A seed (label image,
and/or points and boxes rasterised into one) is queued by a service call and started on the next
processed frame; every later frame steps the propagation. Label ids are kept as given (0 =
background, 1..255 objects): they are compacted for the propagator and mapped back on output,
so sparse ids (e.g. 3 and 200) cost no more than 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvm_ros.image_codec import ImageError, unpack_rows

# encoding -> numpy dtype of one label (little-endian unless is_bigendian).
LABEL_ENCODINGS: dict[str, str] = {
    "mono8": "u1",
    "8UC1": "u1",
    "mono16": "u2",
    "16UC1": "u2",
    "32SC1": "i4",
}
MAX_LABEL = 255  # the mask topic is mono8
MASK_METHODS = ("dis", "features")


def decode_labels(msg: Any, max_pixels: int) -> np.ndarray:
    """sensor_msgs/Image of label ids -> int32 [H,W]; raises ImageError (reason, one line)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError("empty", f"empty label image ({w}x{h})")
    if h * w > max_pixels:
        raise ImageError("too_large", f"label image {w}x{h} exceeds {max_pixels} pixels")
    kind = LABEL_ENCODINGS.get(msg.encoding)
    if kind is None:
        shown = msg.encoding[:32]
        raise ImageError(
            "encoding",
            f"label encoding {shown!r} not one of {', '.join(LABEL_ENCODINGS)}",
        )
    dt = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    rows = unpack_rows(bytes(msg.data), h, w, step, w * dt.itemsize, f"{msg.encoding} labels")
    labels = np.ascontiguousarray(rows).view(dt).reshape(h, w).astype(np.int32)
    if labels.min() < 0 or labels.max() > MAX_LABEL:
        raise ImageError(
            "labels", f"label ids must be 0..{MAX_LABEL}, got {labels.min()}..{labels.max()}"
        )
    return labels


@dataclass(frozen=True)
class Shapes:
    """Points (x, y, label) drawn as discs of ``radius`` px and boxes (x0, y0, x1, y1, label)."""

    points: tuple[tuple[float, float, int], ...] = ()
    boxes: tuple[tuple[float, float, float, float, int], ...] = ()
    radius: float = 8.0

    def __bool__(self) -> bool:
        return bool(self.points or self.boxes)

    def check(self) -> None:
        """Raise ValueError naming the first non-finite coordinate or out-of-range label."""
        for kind, items in (("point", self.points), ("box", self.boxes)):
            for i, item in enumerate(items):
                *xy, label = item
                if not all(np.isfinite(xy)):
                    raise ValueError(f"{kind} {i} has a non-finite coordinate {tuple(xy)}")
                if not 1 <= int(label) <= MAX_LABEL:
                    raise ValueError(f"{kind} {i} has label {label}: use 1..{MAX_LABEL}")
        if not (np.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"point radius must be > 0, got {self.radius}")

    def draw(self, labels: np.ndarray) -> np.ndarray:
        """Boxes, then points, painted over ``labels`` [H,W] (a new int32 array)."""
        import cv2

        out = np.array(labels, np.int32, copy=True)
        h, w = out.shape
        for x0, y0, x1, y1, label in self.boxes:
            xa, xb = sorted((x0, x1))
            ya, yb = sorted((y0, y1))
            c0, c1 = int(np.clip(np.floor(xa), 0, w)), int(np.clip(np.floor(xb) + 1, 0, w))
            r0, r1 = int(np.clip(np.floor(ya), 0, h)), int(np.clip(np.floor(yb) + 1, 0, h))
            out[r0:r1, c0:c1] = int(label)
        for x, y, label in self.points:
            # Far outside the image the disc misses it; cv2 needs int32-sized coordinates.
            cx, cy = (int(round(float(np.clip(v, -1e6, 1e6)))) for v in (x, y))
            cv2.circle(out, (cx, cy), max(1, round(self.radius)), int(label), -1)
        return out


@dataclass
class _Seed:
    labels: np.ndarray | None  # [H,W] int32, or None: shapes over background
    shapes: Shapes = field(default_factory=Shapes)


class MaskTracker:
    """One camera's propagated mask, used by one thread at a time (the camera's worker, to which
    ``CameraPipeline`` hands service calls); ``update`` runs with each processed frame."""

    def __init__(self, context: int = 7, method: str = "dis") -> None:
        from rvm_core.readout import FlowMaskPropagator, LabelPropagator, PropagationConfig

        if method not in MASK_METHODS:
            raise ValueError(f"masks.method must be one of {MASK_METHODS}, got {method!r}")
        self.method = method
        # The feature readout's other settings are its defaults; the context length is the
        # node's (cost grows with it, like the DAVIS protocol's 20 frames).
        config = PropagationConfig(context=context, upsample="guided")
        self._make = FlowMaskPropagator if method == "dis" else lambda: LabelPropagator(config)
        self._pending: _Seed | None = None
        self._prop: Any = None
        self._ids = np.zeros(1, np.uint8)  # compact index -> label id
        self.num_labels = 0  # objects (non-zero ids) in the running mask

    @property
    def active(self) -> bool:
        """A mask is running or queued."""
        return self._prop is not None or self._pending is not None

    def set(self, labels: np.ndarray | None, shapes: Shapes | None = None) -> None:
        """Queue a seed for the next processed frame (replaces any running mask)."""
        self._pending = _Seed(labels, shapes or Shapes())

    def clear(self, keep_pending: bool = False) -> None:
        """Stop the running mask; a queued seed is dropped too unless ``keep_pending``."""
        if not keep_pending:
            self._pending = None
        self._prop = None
        self.num_labels = 0

    def update(
        self, features: np.ndarray, image: np.ndarray, want_image: bool = True
    ) -> np.ndarray | None:
        """Features [C,h,w] and camera frame RGB uint8 [H,W,3] of a processed frame -> label ids
        uint8 [H,W] (None: no mask, or ``want_image`` False). Raises ValueError when a seed does
        not fit the frame (dropped)."""
        seed, self._pending = self._pending, None
        image_hw = image.shape[:2]
        # the flow readout reads frames only; the feature one, features [h,w,C] (the frame guides)
        source = image
        if self.method == "features":
            source = np.moveaxis(np.asarray(features, np.float32), 0, -1)
        if seed is not None:
            labels = seed.labels
            if labels is None:
                labels = np.zeros(image_hw, np.int32)
            elif labels.shape != tuple(image_hw):
                raise ValueError(
                    f"label image {labels.shape[1]}x{labels.shape[0]} does not match the camera's "
                    f"{image_hw[1]}x{image_hw[0]}; mask not started"
                )
            if seed.shapes:
                labels = seed.shapes.draw(labels)
            ids, compact = np.unique(labels, return_inverse=True)
            if ids[0] != 0:  # background always has index 0
                ids = np.concatenate([[0], ids])
                compact = compact + 1
            compact = compact.reshape(labels.shape)
            prop = self._make()
            prop.start(source, compact, len(ids))
            self._prop, self._ids = prop, ids.astype(np.uint8)
            self.num_labels = len(ids) - 1
            return labels.astype(np.uint8) if want_image else None
        prop = self._prop
        if prop is None:
            return None
        soft = prop.step_soft(source)  # every frame: the propagation's state needs it
        if not want_image:
            return None
        if self.method == "features":
            soft = prop.upsample(soft, image)
        return self._ids[soft.argmax(-1)]
