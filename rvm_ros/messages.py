"""numpy <-> rvm_ros messages (FeatureMap, PointTracks, NodeStats).

Measured here: assigning ``bytes`` to a ``uint8[]`` field costs ~0.25 ms per MB (rclpy stores it
as ``array('B')`` without a per-element check); a memoryview is ~300x slower, so always bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rvm_ros.msg import FeatureMap, NodeStats, PointTracks

_DTYPES = {
    "float32": (FeatureMap.DTYPE_FLOAT32, "<f4"),
    "float16": (FeatureMap.DTYPE_FLOAT16, "<f2"),
}
_ITEMSIZE = {FeatureMap.DTYPE_FLOAT32: "<f4", FeatureMap.DTYPE_FLOAT16: "<f2"}


@dataclass(frozen=True)
class Geometry:
    """Feature grid placement in source-image pixels (see msg/FeatureMap.msg)."""

    stride_x: float
    stride_y: float
    offset_x: float
    offset_y: float

    @classmethod
    def uniform(cls, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Geometry:
        """Grid cells tiling the whole image (cell centres: ``grid_to_pixel``)."""
        from rvm_core.readout.tracker import grid_to_pixel

        sy, sx = image_hw[0] / grid_hw[0], image_hw[1] / grid_hw[1]
        ox, oy = grid_to_pixel(np.zeros(2), image_hw, grid_hw)  # centre of cell (0, 0)
        return cls(sx, sy, float(ox), float(oy))


def feature_map(
    header: Any,
    features: np.ndarray,
    image_hw: tuple[int, int],
    frame_index: int,
    sequence_id: int,
    model_id: str,
    dtype: str = "float16",
) -> FeatureMap:
    """Features [C,h,w] (any float) -> FeatureMap with ``header`` copied unchanged."""
    code, np_dtype = _DTYPES[dtype]
    c, h, w = features.shape
    geo = Geometry.uniform(image_hw, (h, w))
    msg = FeatureMap()
    msg.header = header
    msg.channels, msg.height, msg.width = c, h, w
    msg.stride_x, msg.stride_y = geo.stride_x, geo.stride_y
    msg.offset_x, msg.offset_y = geo.offset_x, geo.offset_y
    msg.image_height, msg.image_width = int(image_hw[0]), int(image_hw[1])
    msg.dtype = code
    msg.frame_index = int(frame_index)
    msg.sequence_id = int(sequence_id) & 0xFFFFFFFF
    msg.model_id = model_id
    msg.data = np.ascontiguousarray(features, dtype=np_dtype).tobytes()
    return msg


def features_from_msg(msg: Any) -> np.ndarray:
    """FeatureMap -> float array [C,h,w] (float16 or float32, as sent)."""
    dt = _ITEMSIZE[msg.dtype]
    return np.frombuffer(bytes(msg.data), dtype=dt).reshape(msg.channels, msg.height, msg.width)


def point_tracks(
    header: Any,
    ids: np.ndarray,
    xy: np.ndarray,
    visible: np.ndarray,
    visibility: np.ndarray,
    age: np.ndarray,
    frame_index: int,
    sequence_id: int,
) -> PointTracks:
    """Track arrays (ids [N], xy [N,2] px, visible [N], visibility [N] in [0,1], age [N])."""
    msg = PointTracks()
    msg.header = header
    msg.frame_index = int(frame_index)
    msg.sequence_id = int(sequence_id) & 0xFFFFFFFF
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    msg.ids = np.asarray(ids, np.uint32)
    msg.x = np.ascontiguousarray(xy[:, 0])
    msg.y = np.ascontiguousarray(xy[:, 1])
    msg.visible = [bool(v) for v in visible]
    msg.visibility = np.clip(np.asarray(visibility, np.float32), 0.0, 1.0)
    msg.age = np.asarray(age, np.uint32)
    return msg


def tracks_from_msg(msg: Any) -> dict[str, np.ndarray]:
    """PointTracks -> dict of arrays: ids [N], xy [N,2], visible [N], visibility [N], age [N]."""
    return {
        "ids": np.asarray(msg.ids, np.uint32),
        "xy": np.stack([np.asarray(msg.x, np.float32), np.asarray(msg.y, np.float32)], 1),
        "visible": np.asarray(msg.visible, bool),
        "visibility": np.asarray(msg.visibility, np.float32),
        "age": np.asarray(msg.age, np.uint32),
    }


def node_stats(
    header: Any, camera: str, snap: Any, frame_index: int, sequence_id: int
) -> NodeStats:
    """StatsSnapshot -> NodeStats (NaN latencies, i.e. no frame in the window, are sent as 0)."""

    def finite(v: float) -> float:
        return float(v) if np.isfinite(v) else 0.0

    return NodeStats(
        header=header,
        camera=camera,
        frames_in=snap.frames_in,
        frames_processed=snap.frames_processed,
        frames_dropped=snap.frames_dropped,
        frames_rejected=snap.frames_rejected,
        latency_p50_ms=finite(snap.latency_p50_ms),
        latency_p95_ms=finite(snap.latency_p95_ms),
        fps=finite(snap.fps),
        frame_index=int(frame_index),
        sequence_id=int(sequence_id) & 0xFFFFFFFF,
    )
