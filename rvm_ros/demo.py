"""``rvm-ros demo`` (``make demo``): the node on a real clip, outputs recorded, a video and a
summary.

Three processes, as on a robot: the camera player (``rvm_ros.player``, as a camera driver
would) publishes the clip as sensor_msgs/Image on ``/camera/image_raw`` at the clip's frame
rate; ``rvm_node`` runs as ``python -m rvm_ros.launch_local`` starts it (the package's params
file, sensor-data input QoS); this process records the node's outputs (FeatureMap, PointTracks,
masks, NodeStats; serialised bytes as received) to ``OUT/rvm_demo.mcap`` with rosbags and
reads the node's counters from ``/diagnostics``. Before the first frame the demo seeds a mask of two
buildings through the node's ``set_mask`` service (boxes), as a user's client would.

Afterwards ``rvm_demo.mp4`` shows every processed frame (PCA colours of the features, the
propagated mask, tracks with short trails and ids), ``demo_frame.png`` one of them, and one
summary line is printed. All processes use the package's Fast DDS profile (config/fastdds.xml).

Model: ``--model``, else the shipped default (``rvm_ros/data/rvm_default.onnx`` or $RVM_MODEL),
else a randomly initialised ``tiny`` model exported once into ``--cache`` (needs torch). Every
output goes under ``--out`` (default ``runs/demo`` in the working directory), never into the
installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOPIC = "/camera/image_raw"


def default_clip() -> Path:
    """The demo clip shipped inside the package (``rvm_ros/data/demo.mp4``)."""
    path = Path(__file__).resolve().parent / "data" / "demo.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"no demo clip at {path}: pass --clip")
    return path


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


# The seed of the demo's mask: boxes (x0, y0, x1, y1, label) on the bundled clip's first frame
# (640x360: the lit tower in the middle and the smaller one to its left), scaled to other clips.
DEMO_BOXES = ((268.0, 52.0, 408.0, 359.0, 1), (128.0, 172.0, 226.0, 359.0, 2))
DEMO_BOXES_HW = (360, 640)


class DemoError(ValueError):
    """The demo could not run (the node or the camera player failed): one line for the CLI."""


def _last_line(text: str) -> str:
    """The last non-empty line of a process's output ("" when there is none)."""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _stop(proc: subprocess.Popen) -> None:
    """Stop a child as Ctrl-C would, kill it when it does not exit, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_demo_frames(clip: Path, seconds: float, rate: float | None) -> tuple[np.ndarray, float]:
    """The first ``seconds`` of ``clip`` at ``rate`` (default: its fps) -> (frames, fps); decodes
    only those frames, not the whole clip."""
    from rvm_ros.player import read_clip

    fps = rate or read_clip(clip, 1)[1]
    frames, _ = read_clip(clip, max(2, int(round(seconds * fps))))
    return frames, fps


@dataclass
class Recording:
    """What one run of the node on the clip left: the player's stamps, the recorded messages
    (receive time ns, CDR bytes) by topic, the node's last camera diagnostics, the seed's fate."""

    played: list[list[int]]
    messages: dict[str, list[tuple[int, bytes]]]
    counts: dict[str, int]
    diagnostics: dict[str, str]
    seeded: bool


def run_demo(
    clip: Path,
    out_dir: Path,
    model: str | None = None,
    seconds: float = 6.0,
    rate: float | None = None,
    device: str = "cpu",
    cache: Path = Path("runs/cache"),
) -> dict[str, Any]:
    """Play ``seconds`` of ``clip``: player process -> rvm_node process -> recorder here;
    write the bag, video and picture under ``out_dir`` -> the summary."""
    from rvm_ros.dds import use_rvm_dds_profile

    use_rvm_dds_profile()  # before rclpy.init, here and (inherited) in the player and the node
    frames, fps = read_demo_frames(clip, seconds, rate)
    model_path = ensure_model(model, frames.shape[1:3], cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rvm-demo-") as tmp:
        rec = _record(clip, frames, fps, model_path, device, out_dir / "rvm_demo", Path(tmp))
    return _summarise(clip, model_path, frames, fps, rec, out_dir)


def _node_command(model_path: Path, device: str) -> list[str]:
    """The node as ``ros2 launch rvm_ros rvm.launch.py`` would start it (package params file)."""
    cmd = [sys.executable, "-m", "rvm_ros.launch_local", f"image_topic:={TOPIC}"]
    return cmd + [f"model_path:={model_path}", f"device:={device}", "log_level:=warn"]


def _record(
    clip: Path,
    frames: np.ndarray,
    fps: float,
    model_path: Path,
    device: str,
    bag: Path,
    tmp: Path,
) -> Recording:
    """Start the node, seed the mask, play the clip, record the node's outputs into ``bag``;
    the node is stopped and every ROS object released, however this ends."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    node_proc: subprocess.Popen | None = None
    recorder: Recorder | None = None
    ctx = Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    node_log = tmp / "node.log"
    try:
        # The node's log goes to a file: a pipe nobody reads would stall it when full.
        with node_log.open("w") as log:
            node_proc = subprocess.Popen(
                _node_command(model_path, device), env=dict(os.environ), stderr=log
            )
        recorder_node = rclpy.create_node("rvm_demo_recorder", context=ctx)
        recorder = _recorder(recorder_node, bag)
        diagnostics = _watch_diagnostics(recorder_node)
        executor.add_node(recorder_node)
        threading.Thread(target=executor.spin, daemon=True).start()
        _wait_for_node(recorder_node, node_proc, node_log)
        seeded = _seed_mask(recorder_node, f"{TOPIC}/rvm/set_mask", frames.shape[1:3])
        played = _play(clip, len(frames), fps, tmp / "stamps.json")
        _wait_for_last_report(diagnostics)
    finally:
        if recorder is not None:
            recorder.close()
        executor.shutdown(timeout_sec=2.0)
        for n in list(executor.get_nodes()):
            n.destroy_node()
        ctx.try_shutdown()
        if node_proc is not None:
            _stop(node_proc)
    return Recording(played, recorder.messages, dict(recorder.counts), diagnostics, seeded)


def _recorder(node: Any, bag: Path) -> Recorder:
    """A recorder of the node's outputs on the demo camera and its NodeStats."""
    from sensor_msgs.msg import Image

    from rvm_ros.msg import FeatureMap, NodeStats, PointTracks

    topics = {
        f"{TOPIC}/rvm/features": ("rvm_ros/msg/FeatureMap", FeatureMap),
        f"{TOPIC}/rvm/tracks": ("rvm_ros/msg/PointTracks", PointTracks),
        f"{TOPIC}/rvm/masks": ("sensor_msgs/msg/Image", Image),
        "/rvm_node/stats": ("rvm_ros/msg/NodeStats", NodeStats),
    }
    return Recorder(node, bag, topics)


def _watch_diagnostics(node: Any) -> dict[str, str]:
    """A dict kept up to date with the node's last camera status (its key/values) and the
    message of its model status."""
    from diagnostic_msgs.msg import DiagnosticArray

    diagnostics: dict[str, str] = {}

    def on_diagnostics(msg: Any) -> None:
        for st in msg.status:
            if st.hardware_id == TOPIC:
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in st.values})
            elif st.name.endswith(": model"):
                diagnostics["model_message"] = st.message

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    return diagnostics


def _wait_for_node(node: Any, node_proc: subprocess.Popen, node_log: Path) -> None:
    """Until the node publishes its outputs; DemoError with its last log line if it exits."""
    deadline = time.monotonic() + 60.0
    while node.count_publishers(f"{TOPIC}/rvm/masks") < 1:
        if node_proc.poll() is not None:
            why = _last_line(node_log.read_text(errors="replace"))
            raise DemoError(why or f"rvm_node exited with status {node_proc.returncode}")
        if time.monotonic() > deadline:
            raise DemoError("rvm_node did not start within 60 s")
        time.sleep(0.05)
    time.sleep(0.5)  # the node's publishers see the recorder's subscriptions


def _play(clip: Path, n_frames: int, fps: float, stamps_file: Path) -> list[list[int]]:
    """Run the camera player process over the clip -> the stamps it published."""
    cmd = [sys.executable, "-m", "rvm_ros.player", str(clip), "--topic", TOPIC]
    cmd += ["--seconds", str(n_frames / fps), "--rate", str(fps), "--stamps", str(stamps_file)]
    timeout = n_frames / fps + 90.0  # the clip's length plus time for discovery and start-up
    try:
        player = subprocess.run(
            cmd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise DemoError(f"camera player did not finish within {timeout:.0f} s") from None
    if player.returncode != 0:
        why = _last_line(player.stderr) or f"exit status {player.returncode}"
        raise DemoError(f"camera player failed: {why}")
    return json.loads(stamps_file.read_text())["stamps"]


def _wait_for_last_report(diagnostics: dict[str, str]) -> None:
    """Until the node's frame count stops moving (its last frames), at most 5 s: the counters
    are then those of the whole clip."""
    n_in: str | int | None = -1
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(1.2)  # a little more than the 1 Hz diagnostics period
        if diagnostics.get("frames_in") == n_in and "frames_processed" in diagnostics:
            return
        n_in = diagnostics.get("frames_in")


def _summarise(
    clip: Path, model_path: Path, frames: np.ndarray, fps: float, rec: Recording, out_dir: Path
) -> dict[str, Any]:
    """Draw the video and picture, move the bag to ``OUT/rvm_demo.mcap`` -> the summary."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from rvm_ros.msg import FeatureMap, PointTracks

    msgs = rec.messages
    feats = [deserialize_message(raw, FeatureMap) for _, raw in msgs[f"{TOPIC}/rvm/features"]]
    tracks = [deserialize_message(raw, PointTracks) for _, raw in msgs[f"{TOPIC}/rvm/tracks"]]
    masks = [deserialize_message(raw, Image) for _, raw in msgs[f"{TOPIC}/rvm/masks"]]
    lat_p50, lat_p95 = _latency(msgs[f"{TOPIC}/rvm/features"], feats)
    video, picture = out_dir / "rvm_demo.mp4", out_dir / "demo_frame.png"
    stamps = {tuple(st): i for i, st in enumerate(rec.played)}
    write_video(video, picture, frames, stamps, feats, tracks, masks, fps)
    last = tracks[-1] if tracks else None
    diag = rec.diagnostics
    return {
        "clip": str(clip),
        "model": str(model_path),
        "model_id": feats[0].model_id if feats else diag.get("model_id", "?"),
        "published": len(rec.played),
        "received": int(diag.get("frames_in", -1)),
        "processed": int(diag.get("frames_processed", -1)),
        "dropped": int(diag.get("frames_dropped", -1)),
        "fps": _rate(feats),
        "input_fps": fps,
        "latency_p50_ms": lat_p50,
        "latency_p95_ms": lat_p95,
        "tracks_alive": int(np.sum(np.asarray(last.visible))) if last else 0,
        "tracks_total": len(last.ids) if last else 0,
        "mask_seeded": rec.seeded,
        "masks": len(masks),
        "recorded": rec.counts,
        "bag": str(_move_bag(out_dir)),
        "video": str(video),
        "picture": str(picture),
    }


def _latency(received: list[tuple[int, bytes]], feats: list) -> tuple[float, float]:
    """p50, p95 (ms) of image stamp -> FeatureMap received here (node + one small DDS hop)."""
    lat_ms = [
        t * 1e-6 - (f.header.stamp.sec * 1e3 + f.header.stamp.nanosec * 1e-6)
        for (t, _), f in zip(received, feats)
    ]
    if not lat_ms:
        return 0.0, 0.0
    p50, p95 = np.percentile(lat_ms, (50, 95))
    return float(p50), float(p95)


def _move_bag(out_dir: Path) -> Path:
    """The recorded bag directory's one .mcap -> ``OUT/rvm_demo.mcap`` (the directory goes)."""
    bag = next((out_dir / "rvm_demo").glob("*.mcap"), out_dir / "rvm_demo")
    final = out_dir / "rvm_demo.mcap"
    if not bag.is_file():
        return bag
    shutil.move(str(bag), final)
    shutil.rmtree(out_dir / "rvm_demo", ignore_errors=True)
    return final


def _rate(feats: list) -> float:
    """Processed frames per second over the stamps of the recorded FeatureMaps."""
    if len(feats) < 2:
        return 0.0
    t = [f.header.stamp.sec + f.header.stamp.nanosec * 1e-9 for f in feats]
    return (len(t) - 1) / max(t[-1] - t[0], 1e-6)


def _seed_mask(node: Any, service: str, hw: tuple[int, int]) -> bool:
    """Call the camera's set_mask service with the demo boxes (scaled to the clip) -> success."""
    from rvm_ros.srv import SetMask

    cli = node.create_client(SetMask, service)
    if not cli.wait_for_service(timeout_sec=10.0):
        return False
    sy, sx = hw[0] / DEMO_BOXES_HW[0], hw[1] / DEMO_BOXES_HW[1]
    req = SetMask.Request()
    req.box_x0 = [b[0] * sx for b in DEMO_BOXES]
    req.box_y0 = [b[1] * sy for b in DEMO_BOXES]
    req.box_x1 = [b[2] * sx for b in DEMO_BOXES]
    req.box_y1 = [b[3] * sy for b in DEMO_BOXES]
    req.box_labels = [b[4] for b in DEMO_BOXES]
    done = threading.Event()
    fut = cli.call_async(req)
    fut.add_done_callback(lambda _: done.set())
    done.wait(timeout=10.0)
    return bool(fut.done() and fut.result() is not None and fut.result().success)


def write_video(
    path: Path,
    picture: Path,
    frames: np.ndarray,
    stamps: dict,
    feats: list,
    tracks: list,
    masks: list,
    fps: float,
    trail: int = 8,
) -> None:
    """MP4 of every processed frame (PCA colours, mask, tracks with trails and ids) and a PNG
    of the frame two thirds in (480 px wide)."""
    import cv2

    from rvm_ros.image_codec import decode_mono8
    from rvm_ros.messages import features_from_msg, tracks_from_msg
    from rvm_ros.visualize import PCAColorizer, debug_image, draw_trails, overlay_mask

    def key(msg: Any) -> tuple[int, int]:
        return (msg.header.stamp.sec, msg.header.stamp.nanosec)

    by_stamp = {key(t): t for t in tracks}
    mask_by_stamp = {key(m): m for m in masks}
    colorizer = PCAColorizer()
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    history: dict[int, deque] = defaultdict(lambda: deque(maxlen=trail))
    pick = (2 * len(feats)) // 3
    try:
        for n, fm in enumerate(feats):
            k = key(fm)
            if k not in stamps:
                continue
            if fm.frame_index == 0:
                colorizer.reset()  # colours are fitted on a sequence's first frame, as the node
                history.clear()
            img = debug_image(frames[stamps[k]], colorizer(features_from_msg(fm)), [], [])
            m = mask_by_stamp.get(k)
            if m is not None:
                img = overlay_mask(img, decode_mono8(m))
            visible: dict[int, bool] = {}
            tr = by_stamp.get(k)
            if tr is not None:
                t = tracks_from_msg(tr)
                for tid, (x, y), vis in zip(t["ids"].tolist(), t["xy"], t["visible"]):
                    history[tid].append((float(x), float(y)))
                    visible[tid] = bool(vis)
                for tid in [i for i in history if i not in visible]:
                    del history[tid]
            img = draw_trails(img, {i: list(p) for i, p in history.items()}, visible)
            cv2.putText(
                img,
                f"frame {stamps[k]}",
                (6, 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            writer.write(bgr)
            if n == pick:
                size = (480, round(480 * h / w))
                small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(picture), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    finally:
        writer.release()


def demo_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rvm-ros demo``."""
    p.add_argument("--clip", default=None, help="video to play (default: the bundled clip)")
    p.add_argument("--model", default=None, help="ONNX model (default: shipped, else random tiny)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the clip to play")
    p.add_argument("--rate", type=float, default=None, help="publish rate (default: clip fps)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--cache", default="runs/cache", help="where a random model is exported when none ships"
    )
    p.add_argument("--device", default="cpu")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo and print its one-line summary."""
    clip = Path(args.clip) if args.clip else default_clip()
    s = run_demo(
        clip, Path(args.out), args.model, args.seconds, args.rate, args.device, Path(args.cache)
    )
    share = 100.0 * s["processed"] / max(s["published"], 1)
    print(
        f"rvm-ros demo: {s['published']} frames published at {s['input_fps']:.1f} fps, "
        f"{s['processed']} processed ({s['dropped']} dropped) at {s['fps']:.1f} fps, "
        f"latency p50 {s['latency_p50_ms']:.1f} ms p95 {s['latency_p95_ms']:.1f} ms, "
        f"tracks alive {s['tracks_alive']}/{s['tracks_total']}, model {s['model_id']}, "
        f"{s['received']} received, {share:.0f}% of published processed, "
        f"{s['masks']} masks{'' if s['mask_seeded'] else ' (seed refused)'} | "
        f"{s['video']} {s['picture']} {s['bag']}"
    )
    return 0
