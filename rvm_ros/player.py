"""A camera driver stand-in: plays a video as sensor_msgs/Image in its own process.

    python -m rvm_ros.player CLIP --topic /camera/image_raw --seconds 6 [--rate 25]

Publishes rgb8 frames stamped with the publication time, reliable (REP-2003: drivers publish
reliable, consumers choose), after a subscriber has matched. Runs with the package's Fast DDS
profile unless the environment sets one (raw frames need the large shared-memory segment on the
*publishing* side). Prints ``published N`` and writes each frame's stamp to ``--stamps`` (JSON).
Reads the video with OpenCV only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_clip(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Video -> (RGB uint8 [T,H,W,3], fps); raises ValueError when nothing can be read."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path}")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be decoded from {path}")
    return np.stack(frames), fps if fps > 0 else 10.0


def play(
    clip: str,
    topic: str,
    seconds: float,
    rate: float | None,
    frame_id: str,
    stamps_out: str | None,
    wait_sec: float = 30.0,
) -> int:
    """Publish ``seconds`` of ``clip`` on ``topic`` -> number of frames published."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from rvm_ros.dds import use_rvm_dds_profile
    from rvm_ros.image_codec import encode_image

    fps0 = read_clip(clip, 1)[1]
    fps = rate or fps0
    frames, _ = read_clip(clip, max(2, int(round(seconds * fps))))
    msgs = [Image(**encode_image(f)) for f in frames]  # outside the timed loop
    use_rvm_dds_profile()
    rclpy.init()
    node = rclpy.create_node("rvm_camera_player")
    pub = node.create_publisher(
        Image, topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    deadline = time.monotonic() + wait_sec
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # discovery of the reverse direction
    stamps = []
    t0 = time.monotonic()
    for i, msg in enumerate(msgs):
        time.sleep(max(0.0, t0 + i / fps - time.monotonic()))
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        pub.publish(msg)
        stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
    time.sleep(0.5)  # let reliable repairs finish before the writer goes away
    node.destroy_node()
    rclpy.try_shutdown()
    if stamps_out:
        Path(stamps_out).write_text(json.dumps({"fps": fps, "stamps": stamps}))
    return len(stamps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvm_ros.player", description=__doc__)
    p.add_argument("clip")
    p.add_argument("--topic", default="/camera/image_raw")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rate", type=float, default=None, help="frames per second (default: clip)")
    p.add_argument("--frame-id", default="camera")
    p.add_argument("--stamps", default=None, help="write the published stamps here (JSON)")
    a = p.parse_args(argv)
    try:
        n = play(a.clip, a.topic, a.seconds, a.rate, a.frame_id, a.stamps)
    except ValueError as exc:
        print(f"player: error: {exc}", file=sys.stderr)
        return 1
    print(f"published {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
