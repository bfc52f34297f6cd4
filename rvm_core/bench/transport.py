"""``rvm bench transport``: raw camera frames from another process -> frames published, received,
processed.

Three processes, as on a robot: a player (a camera driver: random ``--size`` rgb8 frames at
``--rate``, reliable publisher as REP-2003 asks of drivers), ``rvm_node`` (its own process,
default parameters: sensor-data input QoS) and this process (a plain subscriber with the node's
input QoS, and the node's ``/diagnostics`` for its counters). Printed: frames published, received
by the plain subscriber, received by the node, processed by the node (the rest were replaced by a
newer frame while the model ran: ``dropped``) and rejected.

``--dds rvm`` (default) runs every process with the package's Fast DDS profile
(config/fastdds.xml: a shared-memory segment that holds raw frames); ``--dds default`` with Fast
DDS's defaults, to see why the profile exists. Counts, not timings: not a timed test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TOPIC = "/rvm_bench/transport/image"


def _env(dds: str) -> dict[str, str]:
    """Environment of every process of the run (own ROS domain, the chosen DDS profile)."""
    from rvm_ros.dds import PROFILE_ENV, dds_profile_path

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    env.pop(PROFILE_ENV, None)
    if dds == "rvm":
        env[PROFILE_ENV] = dds_profile_path()
    else:  # set: rvm_node then leaves Fast DDS's defaults alone
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "DEFAULT"
    env["RVM_BENCH_RELIABILITY"] = "reliable"  # the player publishes like a driver
    return env


class _Counter:
    """Plain subscriber (sensor-data QoS, like the node) + the node's /diagnostics."""

    def __init__(self, qos: Any) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("rvm_bench_transport", context=self.context)
        self.received = 0
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Image, TOPIC, self._on_image, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_image(self, msg: Any) -> None:
        self.received += 1

    def _on_diag(self, msg: Any) -> None:
        for s in msg.status:
            if s.hardware_id == TOPIC:
                self.diagnostics = {kv.key: kv.value for kv in s.values}

    def wait_for_node(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_subscribers(TOPIC) >= 2:  # this one and the node's
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def bench_transport(
    model: Path,
    hw: tuple[int, int],
    seconds: float,
    rate: float,
    dds: str,
    qos: str,
    depth: int | None = None,
) -> dict[str, Any]:
    """One run -> counts (published, received by a plain subscriber and by the node,
    processed, dropped, rejected)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from rvm_ros.node import INPUT_QOS

    from .node import play

    env = _env(dds)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"):
        os.environ.pop(key, None)
        if key in env:
            os.environ[key] = env[key]
    # The plain subscriber counts what transport delivers: a deep history, so that a late
    # executor in this process does not overwrite samples (the node keeps its own depth).
    sub_qos = QoSProfile(depth=50, reliability=INPUT_QOS.reliability)
    node_cmd = [sys.executable, "-m", "rvm_ros.node", "--ros-args", "--log-level", "warn"]
    for p in (
        f"model_path:={model}",
        f"image_topics:=[{TOPIC}]",
        "device:=cpu",
        "stats_period_sec:=0.0",
    ):
        node_cmd += ["-p", p]
    if qos == "reliable":
        sub_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        node_cmd += ["-p", f"qos_overrides.{TOPIC}.subscription.reliability:=reliable"]
    if depth is not None:
        node_cmd += ["-p", f"qos_overrides.{TOPIC}.subscription.depth:={depth}"]
    node = subprocess.Popen(node_cmd, env=env)
    counter = _Counter(sub_qos)
    try:
        if not counter.wait_for_node():
            raise RuntimeError("rvm_node did not come up (no subscriber on the camera topic)")
        published = len(play(seconds, rate, hw, env, TOPIC))
        time.sleep(2.5)  # the last frames through the node, then one more diagnostics report
        d = counter.diagnostics
        return {
            "hw": hw,
            "rate": rate,
            "seconds": seconds,
            "dds": dds,
            "qos": qos,
            "depth": depth or INPUT_QOS.depth,
            "model_id": d.get("model_id", "?"),
            "published": published,
            "received": counter.received,
            "node_received": int(d.get("frames_in", -1)),
            "processed": int(d.get("frames_processed", -1)),
            "dropped": int(d.get("frames_dropped", -1)),
            "rejected": int(d.get("frames_rejected", -1)),
            "latency_p50_ms": d.get("latency_p50_ms", "nan"),
        }
    finally:
        counter.close()
        node.terminate()
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()


def format_report(r: dict[str, Any]) -> str:
    """Two lines: the setup, then the counts."""
    h, w = r["hw"]
    return (
        f"transport: {w}x{h} rgb8 at {r['rate']:g} fps for {r['seconds']:g} s from another "
        f"process, DDS profile {r['dds']}, node input QoS {r['qos']} depth {r['depth']}, "
        f"model {r['model_id']}\n"
        f"published {r['published']}, received {r['received']} (plain subscriber), "
        f"received by rvm_node {r['node_received']}, processed {r['processed']} "
        f"(dropped {r['dropped']} for a newer frame, rejected {r['rejected']})"
    )


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped/tiny model)")
    p.add_argument("--size", default="480x640", help="camera frames HxW (default 480x640)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the player publishes")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second")
    p.add_argument("--depth", type=int, default=None, help="the node's input history depth")
    p.add_argument(
        "--dds",
        choices=("rvm", "default"),
        default="rvm",
        help="Fast DDS profile of every process: the package's (shared memory) or the defaults",
    )
    p.add_argument(
        "--qos",
        choices=("sensor", "reliable"),
        default="sensor",
        help="the node's input QoS: its default (sensor data) or reliable via qos_overrides",
    )


def run(args: argparse.Namespace) -> int:
    from .node import default_model

    hw = tuple(int(v) for v in args.size.lower().split("x"))
    model = Path(args.model) if args.model else default_model(hw)
    r = bench_transport(model, hw, args.seconds, args.rate, args.dds, args.qos, args.depth)
    print(format_report(r))
    return 0
