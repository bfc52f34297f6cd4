"""``rvm_node``: camera images in, dense RVM features and point tracks out (a thin ROS shell).

All processing lives in :class:`rvm_ros.camera.CameraPipeline` (plain Python, tested without
ROS); this module wires parameters, subscriptions, publishers, services and timers to it.

Per camera topic ``T`` (parameter ``image_topics``; a topic ending in ``/compressed`` is
subscribed as sensor_msgs/CompressedImage, its outputs go under the topic without the suffix):
``T/rvm/features`` (FeatureMap), ``T/rvm/tracks`` (PointTracks), ``T/rvm/debug_image``
(sensor_msgs/Image, only when ``publish_debug_image`` and someone subscribes) and the service
``T/rvm/reset`` (std_srvs/Trigger). Node-wide: ``~/stats`` (NodeStats, one per camera per
period), services ``~/reset``, ``~/add_queries``, ``~/remove_tracks``.

Latency (NodeStats, logs) is from the image stamp to the FeatureMap's publication: features are
published right after the model step, the tracker runs after that and its PointTracks follow.

Threads: the executor thread only stores each message in its camera's newest-frame slot
(subscriptions are keep-last 1); one worker thread decodes, steps the model and publishes, so a
slow model drops stale frames instead of queueing them. One worker, not one per camera: ONNX
Runtime already uses both cores for one step, and two concurrent steps only contend.

Start without ``ros2 launch``::

    rvm_node --ros-args --params-file config/rvm.yaml -r image:=/camera/image_raw
    python -m rvm_ros.launch_local image_topic:=/camera/image_raw
"""

# ruff: noqa: E402  (OPENBLAS_NUM_THREADS must be set before numpy is imported)
from __future__ import annotations

import os

# Before numpy loads: the node's numpy work is on small matrices (tracker), where a second BLAS
# thread only fights ONNX Runtime's threads for the 2 cores (measured: 3 ms vs 0.06 ms for the
# tracker's similarity matmul under load).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from rvm_ros.blas_threads import limit_blas_threads
from rvm_ros.camera import CameraPipeline, PipelineConfig, Result, stamp_sec
from rvm_ros.image_codec import DEFAULT_MAX_PIXELS, encode_image
from rvm_ros.launch_args import NODE_NAME, default_model_path
from rvm_ros.messages import feature_map, node_stats, point_tracks
from rvm_ros.msg import FeatureMap, NodeStats, PointTracks
from rvm_ros.srv import AddQueries, RemoveTracks, Reset


class Processed(NamedTuple):
    """One processed frame in ``RVMNode.trace`` (wall times from ``time.time()``, s)."""

    camera: str
    stamp: float  # header stamp
    seq: int  # this frame's arrival number on its camera
    newest: int  # arrival number of the camera's newest frame when the worker took this one
    t_received: float  # the subscription callback stored it
    t_taken: float  # the worker took it
    t_published: float  # its FeatureMap was published
    step_s: float  # model step
    proc_s: float  # the node's processing: decode + resize + model step + FeatureMap publish


class ModelLoadError(RuntimeError):
    """The model file is missing or cannot be opened by the runtime."""


@dataclass(frozen=True)
class ModelInfo:
    """What the node needs from the runtime's metadata."""

    model_id: str
    input_hw: tuple[int, int] | None  # the graph's fixed camera size (H, W)


def load_runtime(
    path: str, device: str, threads: int = 0, warmup: int = -1, trt_cache_dir: str = ""
) -> tuple[Any, ModelInfo]:
    """Open the ONNX model -> (runtime, info); raises ModelLoadError with a one-line reason."""

    if not path:
        raise ModelLoadError("cannot load model '': model_path is empty")
    if not os.path.isfile(path):
        raise ModelLoadError(f"cannot load model '{path}': no such file")
    try:
        from rvm_ros.runtime import RVMRuntime

        runtime = RVMRuntime(
            path,
            device=device,
            threads=threads or None,
            warmup=None if warmup < 0 else warmup,
            trt_cache_dir=trt_cache_dir or None,
        )
    except Exception as exc:  # onnxruntime raises several types; one line is all we show
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load model '{path}': {reason[:300]}") from exc
    return runtime, model_info(runtime)


def model_info(runtime: Any) -> ModelInfo:
    """Model id and camera input size from ``runtime.metadata`` (attribute or mapping)."""
    meta = getattr(runtime, "metadata", {})

    def get(*names: str) -> Any:
        for n in names:
            v = meta.get(n) if isinstance(meta, dict) else getattr(meta, n, None)
            if v is not None:
                return v
        return None

    hw = get("input_size", "input_hw", "rvm.input_size")
    if isinstance(hw, str):
        hw = tuple(int(v) for v in hw.lower().split("x"))
    return ModelInfo(
        model_id=str(get("model_id", "rvm.model_id") or "unknown"),
        input_hw=(int(hw[0]), int(hw[1])) if hw is not None else None,
    )


def _descriptor(
    text: str, lo: float | None = None, hi: float | None = None, integer: bool = False
) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text)
    if lo is not None:
        if integer:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


# name -> (default, description, (lo, hi) or None). Mirrored in config/rvm.yaml (tested).
PARAMETERS: dict[str, tuple[Any, str, tuple[float, float] | None]] = {
    "model_path": ("", "ONNX model file (empty: $RVM_MODEL, else the shipped default)", None),
    "device": ("auto", "ONNX Runtime device: auto | cpu | cuda | tensorrt", None),
    "trt_cache_dir": (
        "",
        "TensorRT engine cache directory (empty: $XDG_CACHE_HOME/rvm/tensorrt)",
        None,
    ),
    # 1 by default: the shipped model steps faster on one thread than on two (9.8 vs 11.9 ms,
    # `rvm bench runtime` / `bench all`) and the tracker and executor keep the other core.
    "threads": (1, "ONNX Runtime intra-op threads (0: one per core)", (0, 1024)),
    "warmup_steps": (
        -1,
        "extra steps on a camera's first frame after a (re)start; -1: the model's (warm start)",
        (-1, 100),
    ),
    "image_topics": (
        ["image"],
        "camera topics (sensor_msgs/Image; '.../compressed': jpeg/png)",
        None,
    ),
    "feature_dtype": ("float16", "element type of published features: float16 | float32", None),
    "publish_debug_image": (True, "publish <camera>/rvm/debug_image (PCA colours + tracks)", None),
    "tracks.grid": ([8, 8], "auto-seeded track grid [rows, cols]; [0, 0] disables seeding", None),
    "tracks.max": (256, "maximum tracks per camera", (0, 100000)),
    "tracks.reseed_when_lost": (True, "re-seed a grid cell when its track is lost", None),
    "tracks.lost_frames": (15, "invisible frames before a track is dropped", (1, 100000)),
    "tracks.method": ("rvm", "tracker readout: rvm (features) | hybrid (features + LK) | lk", None),
    "reset_on_time_jump": (True, "reset a camera when its stamps go back or jump", None),
    "max_gap_sec": (1.0, "a gap between processed stamps above this resets (s)", (0.0, 1e6)),
    "stats_period_sec": (
        5.0,
        "period of ~/stats and the stats log line (s); 0: off",
        (0.0, 3600.0),
    ),
    "max_image_pixels": (DEFAULT_MAX_PIXELS, "larger images are rejected", (1, 2**31 - 1)),
    "depth_max": (10000, "16UC1 value shown as white (mm)", (1, 65535)),
    "qos.reliability": ("best_effort", "input QoS: best_effort (accepts both) | reliable", None),
    "qos.depth": (1, "input queue depth (1 = newest frame only)", (1, 100)),
}

_ENUMS = {
    "device": ("auto", "cpu", "cuda", "tensorrt"),
    "feature_dtype": ("float16", "float32"),
    "tracks.method": ("rvm", "hybrid", "lk"),
    "qos.reliability": ("best_effort", "reliable"),
}


@dataclass
class _Camera:
    """ROS handles of one camera; processing state lives in ``pipeline``."""

    topic: str  # as configured
    name: str  # resolved input topic (the camera name in messages and services)
    base: str  # output prefix: name without a '/compressed' suffix
    pipeline: CameraPipeline
    pub_features: Any
    pub_tracks: Any
    pub_debug: Any
    colorizer: Any


class RVMNode(Node):
    """The RVM perception node; ``runtime`` may be injected (tests), else loaded from model_path."""

    def __init__(self, runtime: Any = None, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        super().__init__(node_name, **kwargs)
        limit_blas_threads(1)
        # The executor thread needs the GIL for a moment per frame while the worker runs the
        # tracker (many small numpy calls): a 1 ms switch interval instead of 5 ms halves the
        # frames' delivery delay (measured p50 2.2 -> 1.1 ms under overload). Process-wide.
        if sys.getswitchinterval() > 0.001:
            sys.setswitchinterval(0.001)
        for name, (default, text, rng) in PARAMETERS.items():
            integer = isinstance(default, int) and not isinstance(default, bool)
            lo, hi = rng if rng else (None, None)
            self.declare_parameter(name, default, _descriptor(text, lo, hi, integer))
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name, allowed in _ENUMS.items():
            if p[name] not in allowed:
                raise ValueError(f"parameter {name}={p[name]!r}: choose from {allowed}")
        self.params = p
        if runtime is None:
            path = p["model_path"] or default_model_path()
            runtime, self.model = load_runtime(
                path, p["device"], p["threads"], p["warmup_steps"], p["trt_cache_dir"]
            )
        else:
            self.model = model_info(runtime)
        self.runtime = runtime
        self.pipeline_config = PipelineConfig.from_params(p)
        reliability = (
            ReliabilityPolicy.RELIABLE
            if p["qos.reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos_in = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=p["qos.depth"], reliability=reliability
        )
        qos_out = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._warned: dict[tuple[str, str], float] = {}
        # Bounded record of processed frames, for tests and benchmarks.
        self.trace: deque[Processed] = deque(maxlen=20000)
        self.cameras: list[_Camera] = []
        for topic in p["image_topics"]:
            self._add_camera(topic, qos_in, qos_out)

        self.pub_stats = self.create_publisher(NodeStats, "~/stats", 10)
        self.create_service(Reset, "~/reset", self._srv_reset)
        self.create_service(AddQueries, "~/add_queries", self._srv_add_queries)
        self.create_service(RemoveTracks, "~/remove_tracks", self._srv_remove_tracks)
        if p["stats_period_sec"] > 0:
            self.create_timer(p["stats_period_sec"], self._publish_stats)
        self._worker = threading.Thread(target=self._work, name="rvm_worker", daemon=True)
        self._worker.start()
        names = ", ".join(c.name for c in self.cameras)
        hw = self.model.input_hw
        self.get_logger().info(
            f"model {self.model.model_id} (input {hw[0]}x{hw[1]}) on {names}"
            if hw
            else f"model {self.model.model_id} on {names}"
        )

    # -- setup ---------------------------------------------------------------------------------
    def _add_camera(self, topic: str, qos_in: QoSProfile, qos_out: QoSProfile) -> None:
        compressed = topic.rstrip("/").endswith("/compressed")
        name = self.resolve_topic_name(topic)
        base = name[: -len("/compressed")] if compressed else name
        pipeline = CameraPipeline(
            name, self.runtime, self.pipeline_config, self.model.input_hw, warn=self._warn
        )
        from rvm_ros.visualize import PCAColorizer

        cam = _Camera(
            topic=topic,
            name=name,
            base=base,
            pipeline=pipeline,
            pub_features=self.create_publisher(FeatureMap, f"{base}/rvm/features", qos_out),
            pub_tracks=self.create_publisher(PointTracks, f"{base}/rvm/tracks", qos_out),
            pub_debug=(
                self.create_publisher(Image, f"{base}/rvm/debug_image", qos_out)
                if self.params["publish_debug_image"]
                else None
            ),
            colorizer=PCAColorizer(),
        )

        def on_image(msg: Any, pipeline: CameraPipeline = pipeline) -> None:
            pipeline.submit(msg, compressed)
            self._wake.set()

        msg_type = CompressedImage if compressed else Image
        self.create_subscription(msg_type, topic, on_image, qos_in)

        def trigger(request: Any, response: Any, cam: _Camera = cam) -> Any:
            seq = cam.pipeline.request_reset("service")
            response.success, response.message = True, f"reset {cam.name}: sequence {seq}"
            return response

        self.create_service(Trigger, f"{base}/rvm/reset", trigger)
        self.cameras.append(cam)

    def _warn(self, reason: str, text: str) -> None:
        """Log at most one warning per camera and reason every 5 s (rejections are counted)."""
        key = (text.split(":", 1)[0], reason)
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= 5.0:
            self._warned[key] = now
            # Two call sites: rclpy fixes a logging call site's severity at its first call.
            if reason == "reset":
                self.get_logger().info(text)
            else:
                self.get_logger().warning(text)

    def find_cameras(self, camera: str, allow_all: bool = True) -> list[_Camera]:
        """Cameras matching a service's ``camera`` (resolved topic, configured topic or base)."""
        if not camera:
            return list(self.cameras) if allow_all or len(self.cameras) == 1 else []
        return [c for c in self.cameras if camera in (c.name, c.topic, c.base)]

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            for cam in self.cameras:
                item = cam.pipeline.take()  # the newest frame, taken right before processing
                if item is None:
                    continue
                # A bad frame or runtime error must not stop the node. Each frame is counted
                # once: rejected if it fails before its features are out, else processed.
                try:
                    t0 = time.perf_counter()
                    result = cam.pipeline.process(item, track=False)  # decode + model step
                    if result is None:
                        continue
                    self._publish_features(cam, item, result, t0)
                except Exception as exc:
                    cam.pipeline.stats.reject("error")
                    self._warn("error", f"{cam.name}: processing failed: {exc!r}")
                    continue
                try:
                    self._publish_tracks(cam, result)
                except Exception as exc:  # already counted as processed
                    self._warn("tracking", f"{cam.name}: tracking failed: {exc!r}")

    def _publish_features(self, cam: _Camera, item: Any, r: Result, t0: float) -> None:
        """Publish the features (latency is measured to them) and count the frame processed."""
        if r.reset_reason is not None:
            cam.colorizer.reset()
        cam.pub_features.publish(
            feature_map(
                r.header,
                r.features,
                r.image_hw,
                r.frame_index,
                r.sequence_id,
                self.model.model_id,
                self.params["feature_dtype"],
            )
        )
        proc_s = time.perf_counter() - t0
        t_pub = time.time()
        stamp = stamp_sec(r.header)
        now = self.get_clock().now().nanoseconds * 1e-9
        cam.pipeline.stats.processed(now - stamp, r.step_s)
        self.trace.append(
            Processed(
                cam.name,
                stamp,
                item.seq,
                item.newest,
                item.t_received,
                r.t_taken,
                t_pub,
                r.step_s,
                proc_s,
            )
        )

    def _publish_tracks(self, cam: _Camera, r: Result) -> None:
        """Track the points on the frame's features, publish the tracks (and debug image)."""
        cam.pipeline.track(r)
        cam.pub_tracks.publish(
            point_tracks(
                r.header, r.ids, r.xy, r.visible, r.visibility, r.age, r.frame_index, r.sequence_id
            )
        )
        if cam.pub_debug is not None and cam.pub_debug.get_subscription_count() > 0:
            from rvm_ros.visualize import debug_image

            img = debug_image(r.image, cam.colorizer(r.features), r.xy, r.visible, r.ids)
            cam.pub_debug.publish(Image(header=r.header, **encode_image(img)))

    def _publish_stats(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        for cam in self.cameras:
            snap = cam.pipeline.stats.snapshot()
            pl = cam.pipeline
            self.pub_stats.publish(
                node_stats(header, cam.name, snap, pl.frame_index, pl.sequence_id)
            )
            self.get_logger().info(f"{cam.name}: {snap.line()}")

    # -- services ------------------------------------------------------------------------------
    def _srv_reset(self, request: Any, response: Any) -> Any:
        cams = self.find_cameras(request.camera)
        if not cams:
            response.success, response.message = False, f"unknown camera {request.camera!r}"
            return response
        for cam in cams:
            response.sequence_id = cam.pipeline.request_reset("service")
        response.success = True
        response.message = f"reset {', '.join(c.name for c in cams)}"
        return response

    def _srv_add_queries(self, request: Any, response: Any) -> Any:
        cams = self.find_cameras(request.camera, allow_all=False)
        if len(cams) != 1:
            response.success = False
            response.message = (
                f"unknown camera {request.camera!r}"
                if request.camera
                else "several cameras: name one"
            )
            return response
        if len(request.x) != len(request.y):
            response.success = False
            response.message = f"x and y differ in length ({len(request.x)} != {len(request.y)})"
            return response
        xy = np.stack([np.asarray(request.x, np.float64), np.asarray(request.y, np.float64)], 1)
        if not np.all(np.isfinite(xy)):
            response.success, response.message = False, "non-finite query coordinates"
            return response
        response.ids = cams[0].pipeline.add_queries(xy)
        response.success = True
        response.message = f"{len(xy)} queries added to {cams[0].name}"
        return response

    def _srv_remove_tracks(self, request: Any, response: Any) -> Any:
        cams = self.find_cameras(request.camera)
        if not cams:
            response.success, response.message = False, f"unknown camera {request.camera!r}"
            return response
        response.removed = sum(c.pipeline.remove_tracks(request.ids) for c in cams)
        response.success = True
        response.message = f"removed {response.removed}"
        return response

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console entry point ``rvm_node`` (ROS arguments: ``--ros-args ...``)."""
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = RVMNode()
    except (ModelLoadError, ValueError) as exc:
        print(f"rvm_node: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
