"""``python -m benchmarks node``: rvm_node end to end vs the bare runtime step and a plain rclpy
relay.

One run measures, on the same 640x480 (``--size``) frames:

* **bare step**: ``RVMRuntime.step`` in this process (the node's model work alone), back to
  back and paced at ``--rate`` like the node's frames. Paced steps are slower (measured here
  for the default model at 640x480: 1-3 ms out of 12; busy-waiting between steps instead of
  sleeping removed the difference): the cores idle between frames. The node's frames arrive
  paced, so its overhead is computed against the paced step;
* **relay**: a publisher process -> a subscriber in this process, sensor_msgs/Image of the
  same size (what ROS transport alone costs);
* **node**: a publisher process -> ``rvm_node`` (its own process, default parameters: tracks
  on, debug image off) -> a FeatureMap subscriber here; latency = FeatureMap received - image
  stamp (the stamp is the publish time).

Latencies are measured at ``--rate`` (below the node's capacity, so no frame waits for the
worker); the node's sustained fps is measured separately with frames published at
``--max-rate`` (faster than it can process: it drops to the newest frame). Overheads: node
p50 / (paced bare step p50 + relay p50), and node p50 / back-to-back bare step p50.

Model: ``--model``, else ``rvm_ros/data/rvm_default.onnx``, else the ``tiny`` architecture at
image size 96x128 (random weights) exported for the camera size into ``.build/bench-models``.
Needs rclpy and the rvm_ros interfaces.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import CACHE, child_env, module_command

TOPIC = "/rvm_bench/image"


def default_model(input_hw: tuple[int, int], cache: Path | None = None) -> Path:
    """The shipped default model if exported for ``input_hw``, else a ``tiny`` (96x128) export
    of random weights for ``input_hw`` (cached; the cost does not depend on the weights)."""
    from rvm_ros.launch_args import default_model_path
    from rvm_ros.runtime import read_metadata

    shipped = Path(default_model_path())
    if shipped.is_file() and tuple(read_metadata(shipped).input_size) == tuple(input_hw):
        return shipped
    from rvm_core.export_cache import cached_export

    return cached_export(
        cache or CACHE,
        f"rvm_tiny_96x128_{input_hw[0]}x{input_hw[1]}",
        "tiny",
        seed=0,
        model_args={"image_size": (96, 128)},
        input_size=tuple(input_hw),
    )


def parse_hw(text: str) -> tuple[int, int]:
    """``--size`` "HxW" -> (H, W); ValueError with the expected form otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--size must be HxW, e.g. 480x640 (got {text!r})")
    return int(parts[0]), int(parts[1])


def _reliability() -> str:
    """QoS reliability of every endpoint of the run (``--qos``, passed on in the environment)."""
    return os.environ.get("RVM_BENCH_RELIABILITY", "best_effort")


def _frames(hw: tuple[int, int], n: int = 8) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, hw[0], hw[1], 3), dtype=np.uint8)


def publish_main(argv: list[str]) -> int:
    """Publisher process: ``TOPIC SECONDS RATE H W OUT.npy`` -> publish times (s) in OUT."""
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from rvm_ros.dds import use_rvm_dds_profile
    from rvm_ros.image_codec import encode_image

    topic, seconds, rate, h, w, out = argv
    seconds, rate = float(seconds), float(rate)
    use_rvm_dds_profile()  # raw frames over shared memory, as rvm_node's own processes do
    rclpy.init()
    node = rclpy.create_node("rvm_bench_player")
    qos = QoSProfile(depth=1, reliability=getattr(ReliabilityPolicy, _reliability().upper()))
    pub = node.create_publisher(Image, topic, qos)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # discovery of the reverse direction
    msgs = [Image(**encode_image(f)) for f in _frames((int(h), int(w)))]
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
    return 0


class SpinningNode:
    """An rclpy node in its own context: ``spin()`` serves it on a thread, ``close`` ends it."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin(self) -> None:
        """Serve the node's callbacks from now on (after its subscriptions exist)."""
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()


class _Receiver(SpinningNode):
    """Subscriber (own executor thread): receive time - header stamp of every message."""

    def __init__(self, msg_type: Any, topic: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        super().__init__("rvm_bench_receiver")
        self.samples: list[tuple[float, float]] = []  # (receive time, latency) s
        self.node.create_subscription(
            msg_type,
            topic,
            self._on_msg,
            QoSProfile(depth=10, reliability=getattr(ReliabilityPolicy, _reliability().upper())),
        )
        self.spin()

    def _on_msg(self, msg: Any) -> None:
        now = time.time()
        self.samples.append((now, now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)))

    def wait_for_publisher(self, topic: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_publishers(topic) > 0:
                return True
            time.sleep(0.05)
        return False


def play(
    seconds: float, rate: float, hw: tuple[int, int], env: dict[str, str], topic: str = TOPIC
) -> Any:
    """Run the publisher process (random HxW rgb8 frames on ``topic``) -> publish times (s)."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="rvm-bench-play-") as tmp:
        out = Path(tmp) / "times.npy"
        cmd = module_command("node", "--publish", topic, str(seconds), str(rate))
        cmd += [str(hw[0]), str(hw[1]), str(out)]
        subprocess.run(cmd, env=child_env(env), check=True, timeout=seconds + 90)
        return np.load(out, allow_pickle=False)


def _time_steps(rt: Any, frames: Any, n: int, rate: float | None = None) -> list[float]:
    """Seconds of ``n`` runtime steps over ``frames``, back to back or started at ``rate`` Hz."""
    times = []
    start = time.perf_counter()
    for i in range(max(1, n)):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        t = time.perf_counter()
        rt.step(frames[i % len(frames)])
        times.append(time.perf_counter() - t)
    return times


def _stats(lat_s: Any) -> dict[str, float]:
    """p50/p95 (ms) and count of latencies given in seconds."""
    from rvm_ros.stats import percentiles

    lat = [1e3 * float(v) for v in lat_s]
    p50, p95 = percentiles(lat, (50, 95))
    return {"p50": p50, "p95": p95, "n": len(lat)}


def bench_node(
    model: Path,
    hw: tuple[int, int],
    seconds: float,
    rate: float,
    max_rate: float,
    threads: int,
    steps: int,
) -> dict[str, Any]:
    """All measurements of one run (latencies in ms, fps in frames/s)."""
    import numpy as np
    from sensor_msgs.msg import Image

    from rvm_ros.blas_threads import limit_blas_threads
    from rvm_ros.msg import FeatureMap
    from rvm_ros.runtime import RVMRuntime

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    limit_blas_threads(1)
    frames = _frames(hw)
    out: dict[str, Any] = {"model": model, "hw": hw, "threads": threads, "rate": rate}

    # (a) bare runtime step on the same frames: back to back, then paced at the node's rate.
    rt = RVMRuntime(model, device="cpu", threads=threads or None)
    out["model_id"] = rt.metadata.model_id
    _time_steps(rt, frames, 3)  # warm-up
    out["bare"] = _stats(_time_steps(rt, frames, steps))
    out["bare_paced"] = _stats(_time_steps(rt, frames, min(steps, round(seconds * rate)), rate))
    del rt

    # (b) plain rclpy relay: publisher process -> subscriber here.
    rx = _Receiver(Image, TOPIC)
    try:
        pub = play(seconds, rate, hw, env)
        time.sleep(0.3)
        out["relay"] = _stats([lat for _, lat in rx.samples])
        out["relay"]["sent"] = len(pub)
    finally:
        rx.close()

    # (c) the node in its own process: publisher -> rvm_node -> FeatureMap subscriber here.
    node_cmd = [sys.executable, "-m", "rvm_ros.node", "--ros-args", "--log-level", "warn"]
    for p in (
        f"model_path:={model}",
        f"image_topics:=[{TOPIC}]",
        f"threads:={threads}",
        "device:=cpu",
        "publish_debug_image:=false",
        "stats_period_sec:=0.0",
        f"qos_overrides.{TOPIC}.subscription.reliability:={_reliability()}",
    ):
        node_cmd += ["-p", p]
    node = subprocess.Popen(node_cmd, env=env)
    features = f"{TOPIC}/rvm/features"
    rx = _Receiver(FeatureMap, features)
    try:
        if not rx.wait_for_publisher(features, timeout=60.0):
            raise RuntimeError("rvm_node did not come up (no FeatureMap publisher)")
        pub = play(seconds, rate, hw, env)
        time.sleep(0.5)
        out["node"] = _stats([lat for _, lat in rx.samples])
        out["node"]["sent"] = len(pub)
        # Sustained fps: frames published faster than the node can process them.
        rx.samples.clear()
        pub = play(seconds, max_rate, hw, env)
        got = np.array([t for t, _ in rx.samples if pub[0] <= t <= pub[-1]])
        span = pub[-1] - pub[0]
        out["fps"] = len(got) / span if span > 0 else float("nan")
        out["fps_offered"] = (len(pub) - 1) / span if span > 0 else float("nan")
        out["overload"] = _stats([lat for _, lat in rx.samples])
    finally:
        rx.close()
        node.terminate()
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
    return out


def format_report(r: dict[str, Any]) -> str:
    """The measurements as a text table plus the overhead and fps lines."""
    h, w = r["hw"]
    lines = [
        f"model {r['model_id']} ({Path(r['model']).name}), frames {w}x{h}, "
        f"ORT threads {r['threads'] or 'default'}, QoS {_reliability()}, "
        f"os.cpu_count() {os.cpu_count()}",
        f"{'measurement':<34} {'p50 ms':>8} {'p95 ms':>8} {'samples':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    rows = [
        ("bare runtime step, back to back", r["bare"]),
        (f"bare runtime step, paced {r['rate']:g} Hz", r["bare_paced"]),
        ("rclpy relay (Image transport)", r["relay"]),
        ("node end to end (image->FeatureMap)", r["node"]),
        ("node under overload (newest frame)", r["overload"]),
    ]
    for name, s in rows:
        lines.append(f"{name:<34} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['n']:>8d}")
    base = r["bare_paced"]["p50"] + r["relay"]["p50"]
    lines.append(
        f"overhead: node p50 / (paced bare step + relay) p50 = {r['node']['p50'] / base:.2f}x "
        f"({(r['node']['p50'] / base - 1) * 100:+.0f}%), node / back-to-back bare step = "
        f"{r['node']['p50'] / r['bare']['p50']:.2f}x"
    )
    lines.append(
        f"sustained: {r['fps']:.1f} fps at {w}x{h} (offered {r['fps_offered']:.1f} fps); "
        f"delivered at --rate: {r['node']['n']}/{r['node']['sent']} frames"
    )
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped/tiny model)")
    p.add_argument("--size", default="480x640", help="camera frames HxW (default 480x640)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each ROS phase")
    p.add_argument("--rate", type=float, default=10.0, help="publish rate for latencies (Hz)")
    p.add_argument("--max-rate", type=float, default=60.0, help="publish rate for fps (Hz)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: default)")
    p.add_argument("--steps", type=int, default=100, help="timed bare runtime steps")
    p.add_argument(
        "--qos",
        choices=("best_effort", "reliable"),
        # Reliable, so that the latencies measure the node rather than transport losses; with
        # the package's DDS profile best effort delivers raw frames too (the transport suite).
        default="reliable",
        help="reliability of the publisher, the node's input and the receivers",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args: argparse.Namespace) -> int:
    hw = parse_hw(args.size)
    os.environ["RVM_BENCH_RELIABILITY"] = args.qos
    seconds, steps = (args.seconds, args.steps) if not args.quick else (2.0, 10)
    model = Path(args.model) if args.model else default_model(hw)
    r = bench_node(model, hw, seconds, args.rate, args.max_rate, args.threads, steps)
    print(format_report(r))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        sys.exit(publish_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks node [...] (this module runs directly only as --publish)")
