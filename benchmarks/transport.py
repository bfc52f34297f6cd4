"""``python -m benchmarks transport``: raw camera frames from another process -> frames published,
received, processed.

Three processes, as on a robot: a player (a camera driver: random ``--size`` rgb8 frames at
``--rate``, reliable publisher as REP-2003 asks of drivers), ``rvm_node`` (its own process,
default parameters: sensor-data input QoS) and this process (a plain subscriber with the node's
input QoS, and the node's ``/diagnostics`` for its counters). Printed: frames published, received
by the plain subscriber, received by the node, processed by the node (the rest were replaced by a
newer frame while the model ran: ``dropped``) and rejected.

``--dds rvm`` (default) runs every process with the package's Fast DDS profile
(config/fastdds.xml: a shared-memory segment that holds raw frames); ``--dds default`` with Fast
DDS's defaults, to see why the profile exists; ``--dds large_data`` with Fast DDS's builtin
LARGE_DATA transports (``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, one variable, no XML). The
environment of this process is restored afterwards. Counts, not timings: not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .node import SpinningNode, default_model, parse_hw, play

TOPIC = "/rvm_bench/transport/image"


def _env(dds: str) -> dict[str, str]:
    """Environment of every process of the run (own ROS domain, the chosen DDS setup)."""
    from rvm_ros.dds import dds_env

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["RVM_BENCH_RELIABILITY"] = "reliable"  # the player publishes like a driver
    return dds_env(dds, env)


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """This process runs with ``env`` (its DDS participant reads it) and gets its own back."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class _Counter(SpinningNode):
    """Plain subscriber (sensor-data QoS, like the node) + the node's /diagnostics."""

    def __init__(self, qos: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image

        super().__init__("rvm_bench_transport")
        self.received = 0
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Image, TOPIC, self._on_image, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.spin()

    def _on_image(self, msg: Any) -> None:
        self.received += 1

    def _on_diag(self, msg: Any) -> None:
        for s in msg.status:
            if s.hardware_id == TOPIC:
                self.diagnostics = {kv.key: kv.value for kv in s.values}

    def wait_for_node(self, node: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
        """Return once the node subscribes to the camera topic; RuntimeError when its process
        exits (with its last stderr line) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.node.count_subscribers(TOPIC) < 2:  # this one and the node's
            if node.poll() is not None:
                why = _last_line(log) or f"exit status {node.returncode}"
                raise RuntimeError(f"rvm_node exited: {why}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rvm_node did not subscribe to {TOPIC} within {timeout:g} s")
            time.sleep(0.05)


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

    env = _env(dds)
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
    with tempfile.TemporaryDirectory(prefix="rvm-bench-transport-") as tmp, _environ(env):
        log = Path(tmp) / "node.log"
        node = None
        counter = None
        try:
            with log.open("w") as err:
                node = subprocess.Popen(node_cmd, env=env, stderr=err)
            counter = _Counter(sub_qos)
            counter.wait_for_node(node, log)
            published = len(play(seconds, rate, hw, env, TOPIC))
            time.sleep(2.5)  # the last frames through the node, then one more diagnostics report
            d = counter.diagnostics
            received = counter.received
        finally:
            if counter is not None:
                counter.close()
            if node is not None:
                node.terminate()
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
    return {
        "hw": hw,
        "rate": rate,
        "seconds": seconds,
        "dds": dds,
        "qos": qos,
        "depth": depth or INPUT_QOS.depth,
        "model_id": d.get("model_id", "?"),
        "published": published,
        "received": received,
        "node_received": int(d.get("frames_in", -1)),
        "processed": int(d.get("frames_processed", -1)),
        "dropped": int(d.get("frames_dropped", -1)),
        "rejected": int(d.get("frames_rejected", -1)),
        "latency_p50_ms": d.get("latency_p50_ms", "nan"),
    }


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
        choices=("rvm", "default", "large_data"),
        default="rvm",
        help="Fast DDS setup of every process: the package's profile (shared memory), Fast "
        "DDS's defaults, or FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA",
    )
    p.add_argument(
        "--qos",
        choices=("sensor", "reliable"),
        default="sensor",
        help="the node's input QoS: its default (sensor data) or reliable via qos_overrides",
    )


def run(args: argparse.Namespace) -> int:
    hw = parse_hw(args.size)
    model = Path(args.model) if args.model else default_model(hw)
    r = bench_transport(model, hw, args.seconds, args.rate, args.dds, args.qos, args.depth)
    print(format_report(r))
    return 0
