"""rosbag2 tools: ``rvm-ros make-bag VIDEO OUT_BAG`` and ``rvm-ros bag-eval BAG --checkpoint M``.

``bag-eval`` replays an image topic through :class:`rvm_ros.camera.CameraPipeline` - the node's
processing, message by message with no drops - and writes the node's FeatureMap/PointTracks
(built by the same ``rvm_ros.messages`` functions, serialised by rclpy) into an output bag.
With ground truth it prints TAP-Vid metrics: a sidecar ``<BAG>.tracks.npz`` (or ``--gt``) with
``tracks`` [N,T,2] (x, y source px), ``occluded`` [N,T] bool and optionally ``query_points``
[N,3] (t, y, x; default: each track's first visible frame); the queries are added through the
pipeline's ``add_queries`` before their frame, as the node's ``~/add_queries`` service would.

Bags are read and written with ``rosbags`` (sqlite3 or mcap); the rvm_ros message types are
registered from the .msg files, so the output bag carries their definitions.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MSG_TYPES = ("FeatureMap", "PointTracks", "NodeStats")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def msg_dir() -> Path:
    """Directory of the rvm_ros .msg files (source checkout, else the installed share dir)."""
    src = Path(__file__).resolve().parent.parent / "msg"
    if src.is_dir():
        return src
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("rvm_ros")) / "msg"


def typestore() -> Any:
    """rosbags typestore (ROS 2 Kilted) with the rvm_ros messages registered from their .msg."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for name in MSG_TYPES:
        text = (msg_dir() / f"{name}.msg").read_text()
        types.update(get_types_from_msg(text, f"rvm_ros/msg/{name}"))
    store.register(types)
    return store


def open_writer(path: str | Path, storage: str = "mcap") -> Any:
    """A rosbags rosbag2 Writer (mcap or sqlite3) for a new bag directory ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    return Writer(Path(path), version=9, storage_plugin=plugin)


# -- make-bag ----------------------------------------------------------------------------------
def make_bag(
    video: str | Path,
    out: str | Path,
    topic: str = "/camera/image_raw",
    frame_id: str = "camera",
    encoding: str = "rgb8",
    fps: float | None = None,
    max_frames: int | None = None,
    storage: str = "mcap",
    start_sec: float = 1_700_000_000.0,
) -> int:
    """Write the frames of ``video`` as sensor_msgs/Image to a new bag -> number of frames."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from rvm_core.data.video import probe_video, read_video
    from rvm_ros.image_codec import encode_image

    frames = read_video(video, max_frames=max_frames)
    rate = fps or probe_video(video).fps or 30.0
    store = typestore()
    with open_writer(out, storage) as writer:
        conn = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
        for i, frame in enumerate(frames):
            t_ns = int(round((start_sec + i / rate) * 1e9))
            msg = Image(**encode_image(frame, encoding))
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
            msg.header.frame_id = frame_id
            writer.write(conn, t_ns, serialize_message(msg))
    return len(frames)


# -- bag-eval ----------------------------------------------------------------------------------
def read_images(bag: str | Path, topic: str | None) -> Iterator[tuple[str, int, Any, bool]]:
    """(topic, log time ns, rclpy message, compressed) for each image of ``topic`` in the bag."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import CompressedImage, Image

    with AnyReader([Path(bag)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if topic is not None:
            conns = [c for c in conns if c.topic == topic]
        topics = sorted({c.topic for c in conns})
        if len(topics) != 1:
            found = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
            raise ValueError(
                f"{bag}: need exactly one image topic (--image-topic); image topics: {found}"
            )
        for conn, t_ns, raw in reader.messages(connections=conns):
            compressed = conn.msgtype.endswith("CompressedImage")
            yield (
                conn.topic,
                t_ns,
                deserialize_message(raw, CompressedImage if compressed else Image),
                compressed,
            )


def load_gt(path: str | Path) -> dict[str, np.ndarray]:
    """Ground-truth sidecar .npz -> query_points [N,3] (t,y,x), tracks [N,T,2], occluded [N,T]."""
    with np.load(path, allow_pickle=False) as z:
        tracks = np.asarray(z["tracks"], np.float64)
        occluded = np.asarray(z["occluded"]).astype(bool)
        if "query_points" in z:
            queries = np.asarray(z["query_points"], np.float64)
        else:
            t = np.argmax(~occluded, axis=1)
            n = np.arange(len(t))
            queries = np.stack([t, tracks[n, t, 1], tracks[n, t, 0]], 1)
    if tracks.ndim != 3 or occluded.shape != tracks.shape[:2] or queries.shape != (len(tracks), 3):
        raise ValueError(f"{path}: bad ground-truth shapes {tracks.shape}, {occluded.shape}")
    return {"query_points": queries, "tracks": tracks, "occluded": occluded}


class _Scorer:
    """Ground-truth queries fed to the pipeline before their frame, and per frame the predicted
    position and occlusion of every ground-truth track (rows in ground-truth order)."""

    def __init__(self, truth: dict[str, np.ndarray]) -> None:
        self.truth = truth
        self.query_t = np.round(truth["query_points"][:, 0]).astype(int)
        self.query_ids: dict[int, int] = {}  # public track id -> ground-truth row
        self.xy: list[np.ndarray] = []
        self.occluded: list[np.ndarray] = []

    def add_queries(self, pipeline: Any, frame: int) -> None:
        """Queries of frame number ``frame`` into the pipeline, as ``~/add_queries`` would."""
        rows = np.flatnonzero(self.query_t == frame)
        if len(rows):
            ids = pipeline.add_queries(self.truth["query_points"][rows][:, [2, 1]])
            self.query_ids.update(zip(ids.tolist(), rows.tolist()))

    def rejected(self) -> None:
        """A frame the pipeline rejected: it keeps the numbering and counts as all occluded."""
        self.xy.append(self.xy[-1] if self.xy else self.truth["query_points"][:, [2, 1]])
        self.occluded.append(np.ones(len(self.truth["tracks"]), bool))

    def frame(self, result: Any) -> None:
        """The tracks of one processed frame; a track before its query sits at its query."""
        xy = self.truth["query_points"][:, [2, 1]].copy()
        occ = np.ones(len(xy), bool)
        rows = np.array([self.query_ids.get(int(i), -1) for i in result.ids])
        ok = rows >= 0
        xy[rows[ok]], occ[rows[ok]] = result.xy[ok], ~result.visible[ok]
        self.xy.append(xy)
        self.occluded.append(occ)

    def metrics(self, image_hw: tuple[int, int]) -> dict[str, float]:
        """TAP-Vid metrics of every frame so far."""
        return _tapvid(self.truth, np.stack(self.xy, 1), np.stack(self.occluded, 1), image_hw)


class _OutputBag:
    """The output bag: FeatureMap/PointTracks of each result under ``<camera>/rvm/``, built
    and serialised as the node publishes them."""

    def __init__(self, path: str | Path, storage: str, model_id: str, feature_dtype: str) -> None:
        self.writer = open_writer(path, storage)
        self.store = typestore()
        self.model_id, self.feature_dtype = model_id, feature_dtype
        self.conns: dict[str, Any] = {}

    def write(self, topic: str, t_ns: int, compressed: bool, result: Any) -> None:
        """One pipeline result, logged at the input message's time ``t_ns``."""
        from rclpy.serialization import serialize_message

        from rvm_ros.messages import feature_map, point_tracks

        base = topic[: -len("/compressed")] if compressed else topic
        fm = feature_map(
            result.header,
            result.features,
            result.image_hw,
            result.frame_index,
            result.sequence_id,
            self.model_id,
            self.feature_dtype,
        )
        tr = point_tracks(
            result.header,
            result.ids,
            result.xy,
            result.visible,
            result.visibility,
            result.age,
            result.frame_index,
            result.sequence_id,
        )
        for suffix, m, mtype in (
            ("features", fm, "rvm_ros/msg/FeatureMap"),
            ("tracks", tr, "rvm_ros/msg/PointTracks"),
        ):
            name = f"{base}/rvm/{suffix}"
            if name not in self.conns:
                self.conns[name] = self.writer.add_connection(name, mtype, typestore=self.store)
            self.writer.write(self.conns[name], t_ns, serialize_message(m))


def _ground_truth(bag: str | Path, gt: str | Path | None) -> dict[str, np.ndarray] | None:
    """The ground truth of ``--gt``, else of the sidecar ``<BAG>.tracks.npz``, else None."""
    path = Path(gt) if gt else Path(f"{Path(bag).as_posix().rstrip('/')}.tracks.npz")
    return load_gt(path) if path.is_file() else None


def bag_eval(
    bag: str | Path,
    model: str | Path,
    out: str | Path | None = None,
    image_topic: str | None = None,
    gt: str | Path | None = None,
    device: str = "cpu",
    feature_dtype: str = "float16",
    config: Any = None,
    storage: str = "mcap",
    warmup: int = -1,
) -> dict[str, Any]:
    """Replay ``bag`` through the node's pipeline; write outputs to ``out``; TAP-Vid if GT.

    ``warmup``: extra steps on the first frame, as the node's ``warmup_steps`` (-1: the model's).
    """
    from rvm_ros.camera import CameraPipeline, PipelineConfig
    from rvm_ros.node import load_runtime

    runtime, info = load_runtime(str(model), device, warmup=warmup)
    truth = _ground_truth(bag, gt)
    scorer = _Scorer(truth) if truth is not None else None
    output = _OutputBag(out, storage, info.model_id, feature_dtype) if out else None
    pipeline: CameraPipeline | None = None
    n_msgs, n_frames, rejected = 0, 0, 0
    image_hw = None
    try:
        if output is not None:
            output.writer.open()
        for topic, t_ns, msg, compressed in read_images(bag, image_topic):
            if pipeline is None:
                pipeline = CameraPipeline(topic, runtime, config or PipelineConfig(), info.input_hw)
            if scorer is not None:
                scorer.add_queries(pipeline, n_msgs)
            pipeline.submit(msg, compressed)
            result = pipeline.process(pipeline.take())
            n_msgs += 1
            if result is None:
                rejected += 1
                if scorer is not None:
                    scorer.rejected()
                continue
            image_hw = result.image_hw
            n_frames += 1
            if scorer is not None:
                scorer.frame(result)
            if output is not None:
                output.write(topic, t_ns, compressed, result)
    finally:
        if output is not None:
            output.writer.close()
    summary: dict[str, Any] = {"frames": n_frames, "rejected": rejected, "model_id": info.model_id}
    if pipeline is not None:
        summary["resets"] = pipeline.stats.resets
    if scorer is not None and n_frames:
        summary.update(scorer.metrics(image_hw))
    return summary


def _tapvid(truth: dict, pred_xy: np.ndarray, pred_occ: np.ndarray, hw: tuple) -> dict:
    """TAP-Vid 'first' metrics (256x256 space) of predictions [N,T',2] against the ground truth."""
    from rvm_core.eval.metrics import tapvid_video_metrics

    t = min(pred_xy.shape[1], truth["tracks"].shape[1])
    m = tapvid_video_metrics(
        truth["query_points"],
        truth["occluded"][:, :t],
        truth["tracks"][:, :t],
        pred_occ[:, :t],
        pred_xy[:, :t],
        hw,
    )
    keys = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
    return {k: float(m[k][0]) for k in keys}


# -- command line ------------------------------------------------------------------------------
def bag_eval_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rvm-ros bag-eval``."""
    p.add_argument("bag", help="input rosbag2 (directory or .mcap/.db3)")
    p.add_argument(
        "--checkpoint", default=None, help="exported ONNX model (default: the shipped one)"
    )
    p.add_argument("--image-topic", default=None, help="image topic (default: the only one)")
    p.add_argument("--out", default=None, help="output bag with FeatureMap/PointTracks")
    p.add_argument("--gt", default=None, help="ground-truth tracks .npz (default BAG.tracks.npz)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | tensorrt")
    p.add_argument("--params", default=None, help="node parameter YAML (default: config/rvm.yaml)")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))


def cmd_bag_eval(args: argparse.Namespace) -> int:
    """Replay the bag and print one summary line (TAP-Vid metrics with ground truth)."""
    from rvm_ros.camera import PipelineConfig
    from rvm_ros.launch_args import default_model_path, default_params_file
    from rvm_ros.parameters import node_parameters

    params = node_parameters(args.params or default_params_file())
    s = bag_eval(
        args.bag,
        args.checkpoint or default_model_path(),
        out=args.out,
        image_topic=args.image_topic,
        gt=args.gt,
        device=args.device,
        feature_dtype=params["feature_dtype"],
        config=PipelineConfig.from_params(params),
        storage=args.storage,
        warmup=params["warmup_steps"],
    )
    line = f"bag-eval: {s['frames']} frames, {s['rejected']} rejected, model {s['model_id']}"
    if "average_jaccard" in s:
        line += (
            f" | TAP-Vid AJ {s['average_jaccard']:.3f} <delta_avg "
            f"{s['average_pts_within_thresh']:.3f} OA {s['occlusion_accuracy']:.3f}"
        )
    if args.out:
        line += f" | wrote {args.out}"
    print(line)
    return 0


def make_bag_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rvm-ros make-bag``."""
    p.add_argument("video", help="video file (or image folder / .npy)")
    p.add_argument("out", help="output rosbag2 directory")
    p.add_argument("--topic", default="/camera/image_raw")
    p.add_argument("--frame-id", default="camera")
    p.add_argument("--encoding", default="rgb8", choices=("rgb8", "bgr8"))
    p.add_argument("--fps", type=float, default=None, help="default: the video's")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))


def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write the bag and print one line."""
    n = make_bag(
        args.video,
        args.out,
        topic=args.topic,
        frame_id=args.frame_id,
        encoding=args.encoding,
        fps=args.fps,
        max_frames=args.max_frames,
        storage=args.storage,
    )
    print(f"make-bag: wrote {n} frames of {args.video} to {args.out} ({args.topic})")
    return 0
