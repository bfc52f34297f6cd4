"""Publish random 320x240 rgb8 frames at a fixed rate: ``TOPIC SECONDS RATE OUT.npy``.

Run as a separate process by the overload test so the publisher does not share the node's GIL;
writes the publish time (s, = the header stamp) of every frame to OUT.npy.
"""

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from rvm_ros.image_codec import encode_image


def main() -> None:
    topic, seconds, rate, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    rclpy.init()
    node = rclpy.create_node("rvm_test_player")
    pub = node.create_publisher(
        Image, topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    deadline = time.monotonic() + 15.0
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    rng = np.random.default_rng(3)
    msgs = [Image(**encode_image(f)) for f in rng.integers(0, 256, (8, 240, 320, 3), np.uint8)]
    times = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        msg = msgs[i % len(msgs)]
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        pub.publish(msg)
        times.append(now * 1e-9)
        i += 1
    np.save(out, np.array(times))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
