"""``rvm demo`` (``make demo``): the node on a real clip, outputs recorded, a picture and a summary.

In one process (MultiThreadedExecutor): a player node publishes the clip as sensor_msgs/Image on
``/camera/image_raw`` at the clip's frame rate, ``rvm_node`` (the real node class, default
parameters from config/rvm.yaml) processes it, and a recorder writes the node's outputs
(FeatureMap, PointTracks, NodeStats; serialised bytes as received) to
``runs/demo/rvm_demo.mcap`` with rosbags. Afterwards ``demo_strip.png`` shows a few frames with
PCA feature colours and tracks, and one summary line is printed.

Model: ``--model``, else the shipped default (``rvm_ros/data/rvm_default.onnx`` or $RVM_MODEL),
else a randomly initialised ``tiny`` model exported once into ``runs/cache`` (needs torch).
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIP_CANDIDATES = (
    Path(__file__).resolve().parent / "data" / "demo.mp4",
    REPO / "data" / "demo" / "demo.mp4",
    REPO / "data" / "real" / "debian" / "vtest.avi",
)


def default_clip() -> Path:
    """The bundled demo clip, else a real video of the data folder."""
    for path in CLIP_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no demo clip: tried {', '.join(map(str, CLIP_CANDIDATES))}")


def ensure_model(model: str | None, input_hw: tuple[int, int], cache: Path) -> Path:
    """Model to run: given, shipped default, or a random ``tiny`` exported for ``input_hw``."""
    from rvm_ros.launch_args import default_model_path

    if model:
        return Path(model)
    shipped = Path(default_model_path())
    if shipped.is_file():
        return shipped
    print(f"demo: no default model at {shipped}; using a random 'tiny' model (cached in {cache})")
    from rvm_core.export_cache import cached_export

    return cached_export(
        cache,
        f"rvm_tiny_random_{input_hw[0]}x{input_hw[1]}",
        "tiny",
        seed=0,
        input_size=tuple(input_hw),
        features_fp16=True,
    )


class Recorder:
    """Writes every message of the given topics, as received (CDR bytes), to an mcap bag."""

    def __init__(self, node: Any, out: Path, topics: dict[str, tuple[str, Any]]) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from rvm_ros.bag_eval import open_writer, typestore

        if out.exists():
            shutil.rmtree(out)
        self.writer = open_writer(out, "mcap")
        self.writer.open()
        store = typestore()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.messages: dict[str, list[tuple[int, bytes]]] = {}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for topic, (type_name, msg_type) in topics.items():
            conn = self.writer.add_connection(topic, type_name, typestore=store)
            self.counts[topic] = 0
            self.messages[topic] = []

            def cb(raw: bytes, topic: str = topic, conn: Any = conn) -> None:
                t = time.time_ns()
                with self._lock:
                    self.writer.write(conn, t, raw)
                    self.counts[topic] += 1
                    self.messages[topic].append((t, raw))

            node.create_subscription(msg_type, topic, cb, qos, raw=True)

    def close(self) -> None:
        with self._lock:
            self.writer.close()


def run_demo(
    clip: Path,
    out_dir: Path,
    model: str | None = None,
    seconds: float = 6.0,
    rate: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Play ``seconds`` of ``clip`` through rvm_node, record, draw -> summary dict."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from rvm_core.data.video import probe_video, read_video
    from rvm_ros.bag_eval import node_parameters
    from rvm_ros.image_codec import encode_image
    from rvm_ros.msg import FeatureMap, NodeStats, PointTracks
    from rvm_ros.node import RVMNode, load_runtime

    fps = rate or probe_video(clip).fps or 10.0
    frames = read_video(clip, max_frames=max(2, int(round(seconds * fps))))
    hw = frames.shape[1:3]
    model_path = ensure_model(model, hw, REPO / "runs" / "cache")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = node_parameters(None)  # config/rvm.yaml, as `ros2 launch` would start the node
    runtime, info = load_runtime(str(model_path), device, params["threads"], params["warmup_steps"])

    topic = "/camera/image_raw"
    ctx = Context()
    rclpy.init(context=ctx)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    try:
        node = RVMNode(
            runtime=runtime,
            context=ctx,
            parameter_overrides=[
                Parameter("image_topics", value=[topic]),
                Parameter("stats_period_sec", value=2.0),
                Parameter("feature_dtype", value=params["feature_dtype"]),
                # The demo owns both ends: reliable keep-last-1 still never queues, and raw
                # frames are not lost to best-effort UDP fragment loss (docs/node.md).
                Parameter("qos.reliability", value="reliable"),
            ],
        )
        player = rclpy.create_node("rvm_demo_player", context=ctx)
        recorder_node = rclpy.create_node("rvm_demo_recorder", context=ctx)
        recorder = Recorder(
            recorder_node,
            out_dir / "rvm_demo",
            {
                f"{topic}/rvm/features": ("rvm_ros/msg/FeatureMap", FeatureMap),
                f"{topic}/rvm/tracks": ("rvm_ros/msg/PointTracks", PointTracks),
                "/rvm_node/stats": ("rvm_ros/msg/NodeStats", NodeStats),
            },
        )
        for n in (node, player, recorder_node):
            executor.add_node(n)
        pub = player.create_publisher(
            Image, topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        )
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        # Wait until the node and the recorder are matched, so no frame is published into void.
        deadline = time.monotonic() + 10.0
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        stamps: dict[tuple[int, int], int] = {}
        msgs = [Image(**encode_image(f)) for f in frames]  # outside the timed loop
        t0 = time.monotonic()
        for i, msg in enumerate(msgs):
            time.sleep(max(0.0, t0 + i / fps - time.monotonic()))
            msg.header.stamp = player.get_clock().now().to_msg()
            msg.header.frame_id = "camera"
            stamps[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
            pub.publish(msg)
        played_s = time.monotonic() - t0
        time.sleep(1.0)  # let the last frame come through
        snap = node.cameras[0].pipeline.stats.snapshot(now=None)
        lat_p50, lat_p95 = node.cameras[0].pipeline.stats.latency_percentiles((50, 95))
        recorder.close()
    finally:
        executor.shutdown(timeout_sec=2.0)
        for n in list(executor.get_nodes()):
            n.destroy_node()
        ctx.try_shutdown()

    feats = [
        deserialize_message(raw, FeatureMap)
        for _, raw in recorder.messages[f"{topic}/rvm/features"]
    ]
    tracks = [
        deserialize_message(raw, PointTracks) for _, raw in recorder.messages[f"{topic}/rvm/tracks"]
    ]
    strip = out_dir / "demo_strip.png"
    write_strip(strip, frames, stamps, feats, tracks)
    last = tracks[-1] if tracks else None
    bag = next((out_dir / "rvm_demo").glob("*.mcap"), out_dir / "rvm_demo")
    final = out_dir / "rvm_demo.mcap"
    if bag.is_file():
        shutil.move(str(bag), final)
        shutil.rmtree(out_dir / "rvm_demo", ignore_errors=True)
    return {
        "clip": str(clip),
        "model": str(model_path),
        "model_id": info.model_id,
        "published": len(frames),
        "processed": snap.frames_processed,
        "dropped": snap.frames_dropped,
        "fps": (len(feats) - 1) / max(played_s, 1e-6) if feats else 0.0,
        "input_fps": fps,
        "latency_p50_ms": lat_p50,
        "latency_p95_ms": lat_p95,
        "tracks_alive": int(np.sum(np.asarray(last.visible))) if last else 0,
        "tracks_total": len(last.ids) if last else 0,
        "recorded": dict(recorder.counts),
        "bag": str(final),
        "strip": str(strip),
    }


def write_strip(
    path: Path, frames: np.ndarray, stamps: dict, feats: list, tracks: list, n: int = 5
) -> None:
    """PNG of ``n`` evenly spaced processed frames: PCA colours of the features + tracks."""
    import cv2

    from rvm_ros.messages import features_from_msg, tracks_from_msg
    from rvm_ros.visualize import PCAColorizer, debug_image

    by_stamp = {(t.header.stamp.sec, t.header.stamp.nanosec): t for t in tracks}
    colorizer = PCAColorizer()
    colorizer(features_from_msg(feats[0]))  # fit colours on the first frame, as the node does
    tiles = []
    for k in np.linspace(0, len(feats) - 1, min(n, len(feats))).round().astype(int):
        fm = feats[k]
        key = (fm.header.stamp.sec, fm.header.stamp.nanosec)
        frame = frames[stamps[key]]
        tr = by_stamp.get(key)
        t = tracks_from_msg(tr) if tr is not None else None
        img = debug_image(
            frame,
            colorizer(features_from_msg(fm)),
            t["xy"] if t else np.zeros((0, 2)),
            t["visible"] if t else np.zeros(0, bool),
        )
        h, w = img.shape[:2]
        img = cv2.resize(img, (320, round(320 * h / w)), interpolation=cv2.INTER_AREA)
        cv2.putText(
            img, f"frame {stamps[key]}", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1
        )
        tiles.append(img)
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default=None, help="video to play (default: the bundled clip)")
    p.add_argument("--model", default=None, help="ONNX model (default: shipped, else random tiny)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the clip to play")
    p.add_argument("--rate", type=float, default=None, help="publish rate (default: clip fps)")
    p.add_argument("--out", default=str(REPO / "runs" / "demo"), help="output directory")
    p.add_argument("--device", default="cpu")


def cmd_demo(args: argparse.Namespace) -> int:
    clip = Path(args.clip) if args.clip else default_clip()
    s = run_demo(clip, Path(args.out), args.model, args.seconds, args.rate, args.device)
    print(
        f"rvm demo: {s['published']} frames published at {s['input_fps']:.1f} fps, "
        f"{s['processed']} processed ({s['dropped']} dropped) at {s['fps']:.1f} fps, "
        f"latency p50 {s['latency_p50_ms']:.1f} ms p95 {s['latency_p95_ms']:.1f} ms, "
        f"tracks alive {s['tracks_alive']}/{s['tracks_total']}, model {s['model_id']} | "
        f"{s['bag']} {s['strip']}"
    )
    return 0
