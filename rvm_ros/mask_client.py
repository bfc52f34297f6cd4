"""Example client of the mask service: seed a mask on a camera, then read its propagated masks.

    python -m rvm_ros.mask_client /camera/image_raw --box 268 52 408 359 1 --point 170 250 2
    python -m rvm_ros.mask_client /camera/image_raw --labels seed.png --masks 10

``--labels`` is a label image file (8/16-bit gray or palette PNG, ids 0 = background) at the
camera's resolution; ``--box X0 Y0 X1 Y1 LABEL`` and ``--point X Y LABEL`` (``--radius`` px) are
painted over it. The client calls ``<camera>/rvm/set_mask``, prints the answer, then prints
``--masks`` received ``<camera>/rvm/masks`` (label ids per frame). Exit status 1 when the seed
is refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np


def build_request(labels: np.ndarray | None, boxes: list, points: list, radius: float) -> Any:
    """A SetMask request from a label array [H,W] (or None), boxes and points."""
    from sensor_msgs.msg import Image

    from rvm_ros.srv import SetMask

    req = SetMask.Request()
    if labels is not None:
        arr = np.ascontiguousarray(labels, "<u2" if labels.max() > 255 else np.uint8)
        h, w = arr.shape
        enc = "16UC1" if arr.itemsize == 2 else "mono8"
        req.labels = Image(
            height=h, width=w, encoding=enc, step=w * arr.itemsize, data=arr.tobytes()
        )
    for x0, y0, x1, y1, _ in boxes:
        req.box_x0.append(float(x0))
        req.box_y0.append(float(y0))
        req.box_x1.append(float(x1))
        req.box_y1.append(float(y1))
    req.box_labels = [int(b[4]) for b in boxes]
    req.point_x = [float(p[0]) for p in points]
    req.point_y = [float(p[1]) for p in points]
    req.point_labels = [int(p[2]) for p in points]
    req.point_radius = float(radius)
    return req


def read_labels(path: str) -> np.ndarray:
    """Label ids [H,W] from a gray 8/16-bit image or a palette PNG (DAVIS-style: the palette
    indices are the ids); ValueError in one line otherwise."""
    try:
        from PIL import Image as PILImage
    except ImportError:  # Pillow is optional: OpenCV reads gray images, not palette indices
        PILImage = None
    if PILImage is not None:
        try:
            with PILImage.open(path) as im:
                if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                    return np.asarray(im)
                raise ValueError(f"{path}: {im.mode} image, not gray or palette label ids")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
    import cv2

    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError(f"cannot read {path}")
    if labels.ndim != 2:
        raise ValueError(
            f"{path} has {labels.shape[2]} channels: give a gray label image "
            "(palette PNGs need Pillow: pip install pillow)"
        )
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvm_ros.mask_client", description=__doc__)
    p.add_argument("camera", help="the node's camera topic, e.g. /camera/image_raw")
    p.add_argument("--labels", default=None, help="label image file (PNG, ids)")
    p.add_argument("--box", nargs=5, type=float, action="append", default=[], metavar="V")
    p.add_argument("--point", nargs=3, type=float, action="append", default=[], metavar="V")
    p.add_argument("--radius", type=float, default=8.0, help="point radius (px)")
    p.add_argument("--masks", type=int, default=3, help="masks to print after seeding")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each step")
    a = p.parse_args(argv)

    import rclpy
    from sensor_msgs.msg import Image

    from rvm_ros.image_codec import decode_mono8
    from rvm_ros.srv import SetMask

    labels = None
    if a.labels:
        try:
            labels = read_labels(a.labels)
        except ValueError as exc:
            print(f"mask_client: error: {exc}", file=sys.stderr)
            return 1
    base = a.camera.rstrip("/").removesuffix("/compressed")
    rclpy.init()
    node = rclpy.create_node("rvm_mask_client")
    try:
        got: list[Any] = []
        node.create_subscription(Image, f"{base}/rvm/masks", got.append, 10)
        cli = node.create_client(SetMask, f"{base}/rvm/set_mask")
        if not cli.wait_for_service(timeout_sec=a.timeout):
            print(f"mask_client: error: no service {base}/rvm/set_mask", file=sys.stderr)
            return 1
        fut = cli.call_async(build_request(labels, a.box, a.point, a.radius))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=a.timeout)
        res = fut.result()
        if res is None:
            print("mask_client: error: no answer from set_mask", file=sys.stderr)
            return 1
        print(f"set_mask: success={res.success} labels={res.num_labels} {res.message}")
        if not res.success:
            return 1
        deadline = time.monotonic() + a.timeout
        while len(got) < a.masks and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        for m in got[: a.masks]:
            ids = decode_mono8(m)
            area = {int(v): int(n) for v, n in zip(*np.unique(ids, return_counts=True)) if v}
            stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            print(f"mask {stamp:.3f} {m.width}x{m.height} pixels per label {area}")
        return 0 if len(got) >= a.masks else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
