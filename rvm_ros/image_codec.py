"""sensor_msgs/Image and CompressedImage -> RGB uint8 [H,W,3], without cv_bridge.

Every conversion is ``step``-aware (rows may be padded) and honours ``is_bigendian`` for 16-bit
encodings. Invalid input raises :class:`ImageError` whose ``reason`` is a short stable key (the
node counts rejections by it) and whose message is one human-readable line.

16-bit images are mapped to 8 bit without per-frame normalisation (which would flicker and
change the features frame to frame): ``mono16``/``rgb16``-style intensities keep their top byte;
``16UC1`` (in practice depth in millimetres) is clipped at ``depth_max`` (default 10 m) and scaled.

OpenCV is used only where numpy would be slow or long (YUV 4:2:2, Bayer, JPEG/PNG decoding,
resizing); the tracker needs OpenCV anyway.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# encoding -> (channels, bytes per channel); the layout of the raw bytes of one pixel.
_LAYOUT: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "8UC1": (1, 1),
    "8UC3": (3, 1),
    "8UC4": (4, 1),
    "mono16": (1, 2),
    "16UC1": (1, 2),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "rgba16": (4, 2),
    "bgra16": (4, 2),
    # YUV 4:2:2: two bytes per pixel, a macropixel of 4 bytes covers 2 pixels.
    "yuv422": (2, 1),  # ROS's name for UYVY
    "uyvy": (2, 1),
    "yuv422_yuy2": (2, 1),  # ROS's name for YUYV
    "yuyv": (2, 1),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUT)

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_COMPRESSED_BYTES = 64 * 1024 * 1024


class ImageError(ValueError):
    """An image that cannot be converted; ``reason`` is a stable key for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError("empty", f"empty image ({width}x{height})")
    if height * width > max_pixels:
        raise ImageError(
            "too_large", f"image {width}x{height} exceeds max_image_pixels={max_pixels}"
        )


def unpack_rows(
    data: Any, height: int, width: int, step: int, row_bytes: int, what: str
) -> np.ndarray:
    """The rows of a step-padded buffer -> uint8 view [H,row_bytes]; raises ImageError.

    ``what`` names the pixel kind in the message; the last row need not be padded to a step.
    """
    if step < row_bytes:
        raise ImageError("step", f"step {step} < {row_bytes} bytes for {width} px of {what}")
    buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    need = step * (height - 1) + row_bytes
    if buf.size < need:
        raise ImageError("truncated", f"data has {buf.size} bytes, {width}x{height} needs {need}")
    return np.lib.stride_tricks.as_strided(buf, (height, row_bytes), (step, 1))


def decode_raw(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: Any,
    is_bigendian: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    depth_max: int = 10000,
) -> np.ndarray:
    """Raw image fields (as in sensor_msgs/Image) -> RGB uint8 [H,W,3] (a new array)."""
    height, width, step = int(height), int(width), int(step)
    _check_size(height, width, max_pixels)
    layout = _LAYOUT.get(encoding)
    if layout is None:
        shown = encoding if len(encoding) <= 32 else encoding[:32] + "..."
        raise ImageError("encoding", f"unsupported encoding {shown!r}")
    channels, depth = layout
    row_bytes = width * channels * depth
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and width % 2:
        raise ImageError("size", f"{encoding} needs an even width, got {width}")
    rows = unpack_rows(data, height, width, step, row_bytes, encoding)
    if depth == 2:
        dt = np.dtype(">u2" if is_bigendian else "<u2")
        px = np.ascontiguousarray(rows).view(dt).reshape(height, width, channels)
        if encoding == "16UC1":
            scale = 255.0 / max(int(depth_max), 1)
            px8 = np.minimum(px.astype(np.float32) * scale, 255.0).astype(np.uint8)
        else:
            px8 = (px >> 8).astype(np.uint8)
    else:
        px8 = rows.reshape(height, width * channels)
    return _to_rgb(px8, encoding, height, width, channels)


def _to_rgb(px: np.ndarray, encoding: str, height: int, width: int, channels: int) -> np.ndarray:
    """8-bit pixels (rows may be a strided view) -> contiguous RGB uint8 [H,W,3]."""
    if encoding.startswith(("yuv", "uyvy", "yuyv", "bayer")):
        import cv2

        src = np.ascontiguousarray(px).reshape(height, width, channels)
        if encoding.startswith("bayer"):
            code = {
                # OpenCV names Bayer patterns by the second row; RGGB in ROS = BG in OpenCV.
                "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
                "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
                "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
                "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
            }[encoding]
            return cv2.cvtColor(src[..., 0], code)
        uyvy = encoding in ("yuv422", "uyvy")
        return cv2.cvtColor(src, cv2.COLOR_YUV2RGB_UYVY if uyvy else cv2.COLOR_YUV2RGB_YUYV)
    px = px.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(px, 3, axis=2)
    if encoding.startswith(("bgr", "8UC")):  # 8UC3/8UC4 follow OpenCV's BGR(A) order
        return np.ascontiguousarray(px[..., 2::-1])
    return np.ascontiguousarray(px[..., :3])


def decode_image(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS, depth_max: int = 10000):
    """sensor_msgs/Image -> RGB uint8 [H,W,3]; raises ImageError."""
    return decode_raw(
        msg.height,
        msg.width,
        msg.encoding,
        msg.step,
        msg.data,
        msg.is_bigendian,
        max_pixels=max_pixels,
        depth_max=depth_max,
    )


def decode_mono8(msg: Any) -> np.ndarray:
    """A ``mono8`` sensor_msgs/Image (e.g. the node's label masks) -> uint8 [H,W] (a new array,
    row padding removed); raises ImageError."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width, DEFAULT_MAX_PIXELS)
    if msg.encoding not in ("mono8", "8UC1"):
        raise ImageError("encoding", f"expected mono8, got {msg.encoding[:32]!r}")
    return unpack_rows(bytes(msg.data), height, width, step, width, "mono8").copy()


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or baseline/progressive JPEG header, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def decode_compressed(
    msg: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_COMPRESSED_BYTES,
) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> RGB uint8 [H,W,3]; raises ImageError."""
    import cv2

    data = bytes(msg.data)
    if not data:
        raise ImageError("empty", "empty compressed image")
    if len(data) > max_bytes:
        raise ImageError("too_large", f"compressed image of {len(data)} bytes > {max_bytes}")
    fmt = msg.format.lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ImageError("encoding", f"unsupported compressed format {msg.format[:32]!r}")
    size = compressed_size(data)
    if size is None:
        raise ImageError("corrupt", "not a decodable JPEG/PNG header")
    # Check the declared size before decoding: a small file can declare a huge image.
    _check_size(size[1], size[0], max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError("corrupt", f"cannot decode compressed image ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """RGB uint8 [H,W,3] -> Image fields (height, width, encoding, step, data) for rgb8/bgr8."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encode_image supports rgb8/bgr8, got {encoding!r}")
    img = np.ascontiguousarray(rgb if encoding == "rgb8" else rgb[..., ::-1])
    h, w = img.shape[:2]
    return dict(
        height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3, data=img.tobytes()
    )
