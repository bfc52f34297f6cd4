"""Image conversion without cv_bridge: every listed encoding, step/endianness, rejections."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from rvm_ros.image_codec import (
    ImageError,
    compressed_size,
    decode_compressed,
    decode_image,
    decode_raw,
    encode_image,
)

RNG = np.random.default_rng(0)
H, W = 6, 10
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _raw(px: np.ndarray, encoding: str, pad: int = 0, big: bool = False) -> dict:
    """Pixels [H,W,C] (uint8 or uint16) -> Image fields with ``pad`` bytes after every row."""
    if px.dtype == np.uint16:
        px = px.astype(">u2" if big else "<u2")
    rows = px.reshape(px.shape[0], -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return dict(
        height=px.shape[0],
        width=px.shape[1],
        encoding=encoding,
        step=rows.shape[1],
        data=rows.tobytes(),
        is_bigendian=int(big),
    )


@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings(pad):
    alpha = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
    cases = {
        "rgb8": RGB,
        "bgr8": RGB[..., ::-1],
        "rgba8": np.concatenate([RGB, alpha], 2),
        "bgra8": np.concatenate([RGB[..., ::-1], alpha], 2),
        "8UC3": RGB[..., ::-1],
        "8UC4": np.concatenate([RGB[..., ::-1], alpha], 2),
    }
    for enc, px in cases.items():
        got = decode_raw(**_raw(np.ascontiguousarray(px), enc, pad))
        np.testing.assert_array_equal(got, RGB, err_msg=enc)
        assert got.flags.c_contiguous and got.dtype == np.uint8


@pytest.mark.parametrize("big", [False, True])
def test_16bit_encodings(big):
    px16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    want = (px16 >> 8).astype(np.uint8)
    got = decode_raw(**_raw(px16, "rgb16", pad=2, big=big))
    np.testing.assert_array_equal(got, want)
    got = decode_raw(**_raw(np.ascontiguousarray(px16[..., ::-1]), "bgr16", big=big))
    np.testing.assert_array_equal(got, want)
    mono = px16[..., :1]
    got = decode_raw(**_raw(np.ascontiguousarray(mono), "mono16", pad=2, big=big))
    np.testing.assert_array_equal(got, np.repeat(want[..., :1], 3, 2))
    depth = np.array([[0, 5000, 10000, 60000]], np.uint16)[..., None]
    got = decode_raw(**_raw(depth, "16UC1", big=big), depth_max=10000)
    assert got[0, :, 0].tolist() == [0, 127, 255, 255]


def test_mono8():
    gray = RGB[..., 0:1]
    for enc in ("mono8", "8UC1"):
        got = decode_raw(**_raw(np.ascontiguousarray(gray), enc, pad=5))
        np.testing.assert_array_equal(got, np.repeat(gray, 3, 2))


def test_yuv422_bt601():
    # Pixel pairs of one colour survive 4:2:2 chroma subsampling; BT.601 limited range (OpenCV).
    rgb = np.repeat(RGB[:, ::2], 2, axis=1).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    y, u, v = (np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, u, v))
    chroma = np.where(np.arange(W) % 2 == 0, u, v)  # U for even pixels, V for odd ones
    uyvy = np.stack([chroma, y], -1)
    yuyv = np.stack([y, chroma], -1)
    for enc, px in (("yuv422", uyvy), ("uyvy", uyvy), ("yuyv", yuyv), ("yuv422_yuy2", yuyv)):
        got = decode_raw(**_raw(np.ascontiguousarray(px), enc, pad=4))
        assert np.abs(got.astype(int) - rgb).max() <= 4, enc


def test_bayer():
    # A uniform colour stays that colour after demosaicing.
    bayer = np.zeros((8, 8), np.uint8)
    bayer[0::2, 0::2], bayer[0::2, 1::2], bayer[1::2, 0::2], bayer[1::2, 1::2] = 200, 100, 100, 50
    got = decode_raw(**_raw(bayer[..., None], "bayer_rggb8"))
    assert tuple(got[4, 4]) == (200, 100, 50)


def test_image_message_roundtrip():
    msg = Image(**encode_image(RGB, "bgr8"))
    np.testing.assert_array_equal(decode_image(msg), RGB)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (dict(height=0, width=10, encoding="rgb8", step=30, data=b""), "empty"),
        (dict(height=10, width=0, encoding="rgb8", step=0, data=b""), "empty"),
        (dict(height=100000, width=100000, encoding="rgb8", step=300000, data=b""), "too_large"),
        (dict(height=2, width=2, encoding="rgb8", step=5, data=bytes(12)), "step"),
        (dict(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), "truncated"),
        (dict(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)), "encoding"),
        (dict(height=2, width=2, encoding="", step=6, data=bytes(12)), "encoding"),
        (dict(height=2, width=3, encoding="yuyv", step=6, data=bytes(12)), "size"),
    ],
)
def test_rejections(fields, reason):
    with pytest.raises(ImageError) as exc:
        decode_raw(**fields)
    assert exc.value.reason == reason
    assert "\n" not in str(exc.value)


def test_last_row_needs_no_padding():
    fields = _raw(RGB, "rgb8", pad=2)
    fields["data"] = fields["data"][:-2]
    np.testing.assert_array_equal(decode_raw(**fields), RGB)


def test_compressed_jpeg_png_and_guards():
    for ext, fmt in ((".png", "png"), (".jpg", "rgb8; jpeg compressed bgr8")):
        ok, buf = cv2.imencode(ext, cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
        assert compressed_size(buf.tobytes()) == (W, H)
        got = decode_compressed(CompressedImage(format=fmt, data=buf.tobytes()))
        want = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got, want)
        if ext == ".png":
            np.testing.assert_array_equal(got, RGB)
    ok, png = cv2.imencode(".png", RGB)
    bomb = bytearray(png.tobytes())
    bomb[16:24] = (100000).to_bytes(4, "big") * 2  # declares 100000 x 100000
    with pytest.raises(ImageError) as exc:
        decode_compressed(CompressedImage(format="png", data=bytes(bomb)))
    assert exc.value.reason == "too_large"
    for data, fmt, reason in (
        (b"", "png", "empty"),
        (b"not an image at all", "jpeg", "corrupt"),
        (png.tobytes()[:40], "png", "corrupt"),
        (png.tobytes(), "tiff", "encoding"),
    ):
        with pytest.raises(ImageError) as exc:
            decode_compressed(CompressedImage(format=fmt, data=data))
        assert exc.value.reason == reason, (fmt, data[:8])


def test_random_garbage_never_escapes_as_other_errors():
    rng = np.random.default_rng(1)
    encodings = ["rgb8", "bgr8", "mono16", "16UC1", "yuv422", "yuyv", "rgba8", "bayer_rggb8", "x"]
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(-2, 40, 2))
        step = int(rng.integers(-5, 200))
        data = rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
        try:
            out = decode_raw(max(h, 0), max(w, 0), rng.choice(encodings), max(step, 0), data)
        except ImageError:
            continue
        assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_decode_mono8_drops_row_padding_and_checks_the_message():
    from rvm_ros.image_codec import decode_mono8

    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.zeros((3, 6), np.uint8)
    padded[:, :4] = ids
    msg = Image(height=3, width=4, encoding="mono8", step=6, data=padded.tobytes()[:-2])
    out = decode_mono8(msg)
    assert out.shape == (3, 4) and out.dtype == np.uint8 and np.array_equal(out, ids)
    with pytest.raises(ImageError, match="expected mono8"):
        decode_mono8(Image(height=3, width=4, encoding="rgb8", step=12, data=bytes(36)))
    with pytest.raises(ImageError, match="needs"):
        decode_mono8(Image(height=3, width=4, encoding="mono8", step=4, data=bytes(5)))
