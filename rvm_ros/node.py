"""``rvm_node``: camera images in, dense RVM features, point tracks and masks out (a ROS shell).

All processing lives in :class:`rvm_ros.camera.CameraPipeline` (plain Python, tested without
ROS); this module wires parameters, subscriptions, publishers, services and timers to it.

A managed (lifecycle) node: ``configure`` loads the model and runtime and creates publishers and
services, ``activate`` subscribes and starts publishing, ``deactivate`` stops both and keeps the
configuration (model, camera states), ``cleanup``/``shutdown`` release everything. With the
parameter ``autostart`` (default true) the node configures and activates itself on start.

Per camera topic ``T`` (parameter ``image_topics``; a topic ending in ``/compressed`` is
subscribed as sensor_msgs/CompressedImage, its outputs go under the topic without the suffix):
``T/rvm/features`` (FeatureMap), ``T/rvm/tracks`` (PointTracks), ``T/rvm/masks``
(sensor_msgs/Image mono8 label ids, while a mask is set), ``T/rvm/debug_image`` (only when
``publish_debug_image`` and someone subscribes), services ``T/rvm/reset`` (std_srvs/Trigger)
and ``T/rvm/set_mask`` (SetMask). Node-wide: ``/diagnostics`` (DiagnosticArray, every
``diagnostics.period_sec``), ``~/stats`` (NodeStats), services ``~/reset``, ``~/add_queries``,
``~/remove_tracks``.

QoS: inputs are subscribed with sensor-data semantics (REP-2003: best effort, volatile; depth 1,
newest frame only), overridable with the standard ``qos_overrides.<topic>.subscription.*``
parameters; outputs are reliable.

Latency (NodeStats, diagnostics) is from the image stamp to the FeatureMap's publication: features
are published right after the model step, the tracker and the mask run after that.

Threads: the executor thread only stores each message in its camera's newest-frame slot; one
worker thread decodes, steps the model and publishes, so a slow model drops stale frames instead
of queueing them. One worker, not one per camera: ONNX Runtime already uses both cores for one
step, and two concurrent steps only contend. The worker alone touches the trackers and masks:
services queue their change and the worker applies it between frames, answering the waiting
service (while the node is not active no worker runs, and the service applies it itself).

Start without ``ros2 launch``::

    rvm_node --ros-args --params-file config/rvm.yaml -r image:=/camera/image_raw
    python -m rvm_ros.launch_local image_topic:=/camera/image_raw
"""

# ruff: noqa: E402  (OPENBLAS_NUM_THREADS must be set before numpy is imported)
from __future__ import annotations

import copy
import os

# Before numpy loads: the node's numpy work is on small matrices (tracker), where a second BLAS
# thread only fights ONNX Runtime's threads for the 2 cores (measured: 3 ms vs 0.06 ms for the
# tracker's similarity matmul under load).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from rvm_ros.blas_threads import limit_blas_threads
from rvm_ros.camera import CameraPipeline, PipelineConfig, Result, stamp_sec
from rvm_ros.diagnostics import (
    DiagnosticsConfig,
    RuntimeInfo,
    camera_status,
    model_status,
    runtime_info,
)
from rvm_ros.image_codec import DEFAULT_MAX_PIXELS, ImageError, encode_image
from rvm_ros.launch_args import NODE_NAME, default_model_path
from rvm_ros.masks import Shapes, decode_labels
from rvm_ros.messages import feature_map, node_stats, point_tracks
from rvm_ros.msg import FeatureMap, NodeStats, PointTracks
from rvm_ros.runtime import first_line
from rvm_ros.srv import AddQueries, RemoveTracks, Reset, SetMask


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
    path: str,
    device: str,
    threads: int = 0,
    warmup: int = -1,
    trt_cache_dir: str = "",
    streams: Sequence[str] = ("default",),
) -> tuple[Any, ModelInfo]:
    """Open the ONNX model -> (runtime, info); raises ModelLoadError with a one-line reason.

    ``streams``: the names ``step`` will be called with; each one's first runs (cuDNN loading,
    CUDA-graph capture) happen here, inside the runtime's fallback chain, not on a first frame.
    """

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
            streams=tuple(streams) or ("default",),
        )
    except Exception as exc:  # onnxruntime raises several types; one line is all we show
        raise ModelLoadError(f"cannot load model '{path}': {first_line(exc)[:300]}") from exc
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
    text: str,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    read_only: bool = False,
) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=read_only)
    if lo is not None:
        if integer:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


# Read once when the node is constructed (the diagnostics timer runs in every lifecycle state),
# so they are read-only: a later set would silently do nothing.
_STARTUP_ONLY = frozenset({"autostart", "diagnostics.period_sec"})

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
    "tracks.method": (
        "rvm",
        "tracker readout: rvm (features) | hybrid (features + LK) | lk | dis (DIS optical flow)",
        None,
    ),
    "reset_on_time_jump": (True, "reset a camera when its stamps go back or jump", None),
    "max_gap_sec": (1.0, "a gap between processed stamps above this resets (s)", (0.0, 1e6)),
    "stats_period_sec": (
        5.0,
        "period of ~/stats and the stats log line (s); 0: off",
        (0.0, 3600.0),
    ),
    "max_image_pixels": (DEFAULT_MAX_PIXELS, "larger images are rejected", (1, 2**31 - 1)),
    "depth_max": (10000, "16UC1 value shown as white (mm)", (1, 65535)),
    "autostart": (True, "configure and activate on start (false: wait for lifecycle calls)", None),
    "diagnostics.period_sec": (1.0, "period of /diagnostics (s); 0: off", (0.0, 3600.0)),
    "diagnostics.warn_after_sec": (
        1.0,
        "a camera is WARN when no frame was processed for this long (s)",
        (0.0, 1e6),
    ),
    "diagnostics.stale_after_sec": (
        5.0,
        "... and STALE after this long (s)",
        (0.0, 1e6),
    ),
    "diagnostics.min_fps": (
        0.0,
        "a camera below this processed rate is WARN; 0: no check",
        (0.0, 1e4),
    ),
    "masks.context": (
        7,
        "previous frames the mask propagation attends to, besides the seed frame",
        (1, 100),
    ),
    "masks.max_pixels": (
        DEFAULT_MAX_PIXELS,
        "larger SetMask label images are refused",
        (1, 2**31 - 1),
    ),
}

_ENUMS = {
    "device": ("auto", "cpu", "cuda", "tensorrt"),
    "feature_dtype": ("float16", "float32"),
    "tracks.method": ("rvm", "hybrid", "lk", "dis", "trained"),
}

# REP-2003 sensor-data semantics (best effort, volatile) with the newest frame only: the worker
# takes the newest frame anyway, and a deeper reader queue hands it older ones when the executor
# runs late (measured with depth 5 under 3.5x overload: p99 age 3 frames instead of <= 2). The
# price: a frame the executor has not taken when the next arrives is replaced, uncounted.
INPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=DurabilityPolicy.VOLATILE,
)
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class _Camera:
    """ROS handles of one camera; processing state lives in ``pipeline``."""

    topic: str  # as configured
    name: str  # resolved input topic (the camera name in messages and services)
    base: str  # output prefix: name without a '/compressed' suffix
    compressed: bool
    pipeline: CameraPipeline
    pub_features: Any
    pub_tracks: Any
    pub_masks: Any
    pub_debug: Any
    colorizer: Any
    services: list[Any] = field(default_factory=list)
    subscription: Any = None
    last_diag: Any = None  # the stats snapshot of the previous diagnostics report


class RVMNode(LifecycleNode):
    """The RVM perception node; ``runtime`` may be injected (tests), else loaded from model_path.

    Raises from the constructor when ``autostart`` is set and configuring or activating fails
    (``ModelLoadError``/``ValueError`` for a bad model or parameter, ``RuntimeError``
    otherwise; the reason is also reported on /diagnostics).
    """

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
            self.declare_parameter(
                name, default, _descriptor(text, lo, hi, integer, name in _STARTUP_ONLY)
            )
        self._injected_runtime = runtime
        self.runtime: Any = None
        self.model: ModelInfo | None = None
        self.info: RuntimeInfo | None = None
        self.params: dict[str, Any] = {}
        self.cameras: list[_Camera] = []
        self.state = "unconfigured"
        self.error = ""  # why the last configuration failed
        self._entities: list[tuple[str, Any]] = []  # (kind, handle) created by configure
        self._config_error: Exception | None = None
        self._warned: dict[tuple[str, str], float] = {}
        # Bounded record of processed frames, for tests and benchmarks.
        self.trace: deque[Processed] = deque(maxlen=20000)
        # /diagnostics is published in every state: a stack sees an unconfigured or failed node.
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = self.get_parameter("diagnostics.period_sec").value
        if period > 0:
            self.create_timer(period, self.publish_diagnostics)
        self._autostarting = bool(self.get_parameter("autostart").value)
        if self._autostarting:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise self._config_error or RuntimeError(self.error)
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"activate failed: {self.error}")
        self._autostarting = False

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read and check parameters, load the model, create cameras, publishers, services."""
        self._config_error = None
        try:
            self._configure()
        # Anything: rclpy would swallow an exception from a transition callback unlogged.
        except Exception as exc:
            self._release()
            self._config_error, self.error = exc, first_line(exc)
            if not self._autostarting:  # else the constructor raises it (main prints one line)
                self.get_logger().error(f"configure failed: {self.error}")
            return TransitionCallbackReturn.FAILURE
        self.error = ""
        self.state = "inactive"
        hw = self.model.input_hw
        names = ", ".join(c.name for c in self.cameras)
        self.get_logger().info(
            f"configured: model {self.model.model_id}"
            + (f" (input {hw[0]}x{hw[1]})" if hw else "")
            + f" on {self.info.provider or self.info.device}, cameras {names}"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Publish and subscribe; start the worker."""
        if self._worker is not None:  # a step outlived the last deactivate: one worker only
            return self._activate_failed("the previous worker is still running")
        ret = super().on_activate(state)  # the lifecycle publishers first: no output is lost
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="rvm_worker", daemon=True)
        self._worker.start()
        try:
            for cam in self.cameras:
                cam.subscription = self._subscribe(cam)
        except Exception as exc:  # e.g. an invalid qos_overrides value
            self._deactivate()
            super().on_deactivate(state)
            return self._activate_failed(first_line(exc))
        self.state = "active"
        self.get_logger().info("active")
        return ret

    def _activate_failed(self, reason: str) -> TransitionCallbackReturn:
        self.error = reason
        if not self._autostarting:  # else the constructor raises it (main prints one line)
            self.get_logger().error(f"activate failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop publishing; model and camera states are kept."""
        self._deactivate()
        self.state = "inactive"
        self.get_logger().info("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the runtime, publishers and services (back to unconfigured)."""
        self._release()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from any state."""
        self._deactivate()
        self._release()
        self.state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: release everything and go back to unconfigured."""
        self._deactivate()
        self._release()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name, allowed in _ENUMS.items():
            if p[name] not in allowed:
                raise ValueError(f"parameter {name}={p[name]!r}: choose from {allowed}")
        self._check_distinct_cameras(p["image_topics"])
        self.params = p
        runtime = self._injected_runtime
        path = ""
        if runtime is None:
            path = p["model_path"] or default_model_path()
            runtime, self.model = load_runtime(
                path,
                p["device"],
                p["threads"],
                p["warmup_steps"],
                p["trt_cache_dir"],
                streams=[self._stream_name(t) for t in p["image_topics"]],
            )
        else:
            self.model = model_info(runtime)
            path = str(getattr(runtime, "model_path", ""))
        self.runtime = runtime
        # What was asked for, so /diagnostics can tell a fallback to the CPU (an injected
        # runtime was set up by its caller).
        requested = p["device"] if self._injected_runtime is None else ""
        self.info = runtime_info(runtime, self.model.model_id, path, self.model.input_hw, requested)
        self.pipeline_config = PipelineConfig.from_params(p)
        self.diagnostics_config = DiagnosticsConfig(
            warn_after_sec=p["diagnostics.warn_after_sec"],
            stale_after_sec=p["diagnostics.stale_after_sec"],
            min_fps=p["diagnostics.min_fps"],
        )
        for topic in p["image_topics"]:
            self._add_camera(topic)
        self.pub_stats = self._keep(
            "pub", self.create_lifecycle_publisher(NodeStats, "~/stats", 10)
        )
        for srv_type, name, cb in (
            (Reset, "~/reset", self._srv_reset),
            (AddQueries, "~/add_queries", self._srv_add_queries),
            (RemoveTracks, "~/remove_tracks", self._srv_remove_tracks),
        ):
            self._keep("srv", self.create_service(srv_type, name, cb))
        if p["stats_period_sec"] > 0:
            self._keep("timer", self.create_timer(p["stats_period_sec"], self._publish_stats))

    def _keep(self, kind: str, handle: Any) -> Any:
        """Remember an entity made by configure, so cleanup can destroy it."""
        self._entities.append((kind, handle))
        return handle

    def _deactivate(self) -> None:
        """Stop the worker and destroy the subscriptions (pending frames are discarded)."""
        for cam in self.cameras:
            if cam.subscription is not None:
                self.destroy_subscription(cam.subscription)
                cam.subscription = None
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            if self._worker.is_alive():  # a step hung: kept, so activate refuses a second one
                self.get_logger().error("the worker did not stop within 10 s")
            else:
                self._worker = None
        for cam in self.cameras:
            cam.pipeline.take()

    def _release(self) -> None:
        """Destroy what configure made and drop the runtime."""
        for kind, handle in reversed(self._entities):
            if kind == "pub":
                self.destroy_lifecycle_publisher(handle)
            elif kind == "srv":
                self.destroy_service(handle)
            elif kind == "timer":
                self.destroy_timer(handle)
        self._entities.clear()
        self.cameras = []
        if self.runtime is not None and self._injected_runtime is None:
            close = getattr(self.runtime, "close", None)
            if close is not None:  # its run thread (and GPU session) go now, not at GC
                close()
        self.runtime = self.model = self.info = None

    # -- setup ---------------------------------------------------------------------------------
    def _stream_name(self, topic: str) -> str:
        """The runtime stream of a camera topic: its fully resolved name."""
        return self.resolve_topic_name(topic)

    def _camera_base(self, topic: str) -> str:
        """Where a camera's outputs live: its resolved topic without ``/compressed``."""
        return self._stream_name(topic).removesuffix("/compressed")

    def _check_distinct_cameras(self, topics: Sequence[str]) -> None:
        """Two topics of one camera would share its recurrent state, outputs and services."""
        seen: dict[str, str] = {}
        for topic in topics:
            base = self._camera_base(topic)
            if base in seen:
                raise ValueError(
                    f"image_topics {seen[base]!r} and {topic!r} are one camera: {base}"
                )
            seen[base] = topic

    def _add_camera(self, topic: str) -> None:
        from rvm_ros.visualize import PCAColorizer

        name = self._stream_name(topic)
        base = self._camera_base(topic)
        compressed = base != name
        pipeline = CameraPipeline(
            name,
            self.runtime,
            self.pipeline_config,
            self.model.input_hw,
            warn=self._warn,
            wake=self._wake.set,
        )

        def pub(msg_type: Any, suffix: str) -> Any:
            return self._keep(
                "pub", self.create_lifecycle_publisher(msg_type, f"{base}/rvm/{suffix}", OUTPUT_QOS)
            )

        cam = _Camera(
            topic=topic,
            name=name,
            base=base,
            compressed=compressed,
            pipeline=pipeline,
            pub_features=pub(FeatureMap, "features"),
            pub_tracks=pub(PointTracks, "tracks"),
            pub_masks=pub(Image, "masks"),
            pub_debug=pub(Image, "debug_image") if self.params["publish_debug_image"] else None,
            colorizer=PCAColorizer(),
        )

        def trigger(request: Any, response: Any) -> Any:
            try:
                seq = cam.pipeline.request_reset("service")
            except TimeoutError as exc:
                response.success, response.message = False, f"{cam.name}: {exc}"
                return response
            response.success, response.message = True, f"reset {cam.name}: sequence {seq}"
            return response

        def set_mask(request: Any, response: Any) -> Any:
            return self._srv_set_mask(cam, request, response)

        self._keep("srv", self.create_service(Trigger, f"{base}/rvm/reset", trigger))
        self._keep("srv", self.create_service(SetMask, f"{base}/rvm/set_mask", set_mask))
        self.cameras.append(cam)

    def _subscribe(self, cam: _Camera) -> Any:
        """The camera's input subscription (QoS overridable by ``qos_overrides.<topic>...``)."""
        pipeline, compressed = cam.pipeline, cam.compressed

        def on_image(msg: Any) -> None:
            pipeline.submit(msg, compressed)
            self._wake.set()

        return self.create_subscription(
            CompressedImage if compressed else Image,
            cam.topic,
            on_image,
            copy.copy(INPUT_QOS),  # the QoS overrides are applied to the profile in place
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
        )

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
        cameras = list(self.cameras)  # fixed while active (configure/cleanup stop the worker)
        for cam in cameras:
            cam.pipeline.attach_worker()
        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                for cam in cameras:
                    self._work_once(cam)
        finally:
            for cam in cameras:
                cam.pipeline.detach_worker()

    def _work_once(self, cam: _Camera) -> None:
        """Apply the camera's service requests, then process and publish its newest frame."""
        cam.pipeline.apply_requests()  # between frames: the worker alone touches the tracker
        item = cam.pipeline.take()  # the newest frame, taken right before processing
        if item is None:
            return
        # A bad frame or runtime error must not stop the node. Each frame is counted once:
        # rejected if it fails before its features are out, else processed.
        try:
            t0 = time.perf_counter()
            result = cam.pipeline.process(item, track=False)  # decode + model step
            if result is None:
                return
            self._publish_features(cam, item, result, t0)
        except Exception as exc:
            cam.pipeline.stats.reject("error")
            self._warn("error", f"{cam.name}: processing failed: {exc!r}")
            return
        try:
            self._publish_tracks(cam, result)
        except Exception as exc:  # already counted as processed
            self._warn("tracking", f"{cam.name}: tracking failed: {exc!r}")
        try:
            mask = cam.pipeline.update_mask(result, cam.pub_masks.get_subscription_count() > 0)
            if mask is not None:
                cam.pub_masks.publish(
                    Image(header=result.header, **_mono8(mask))  # input header, camera size
                )
        except Exception as exc:  # already counted as processed
            self._warn("mask", f"{cam.name}: mask propagation failed: {exc!r}")

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
        if self.state != "active":
            return
        header = Header(stamp=self.get_clock().now().to_msg())
        for cam in self.cameras:
            snap = cam.pipeline.stats.snapshot()
            pl = cam.pipeline
            self.pub_stats.publish(
                node_stats(header, cam.name, snap, pl.frame_index, pl.sequence_id)
            )
            self.get_logger().info(f"{cam.name}: {snap.line()}")

    def publish_diagnostics(self) -> None:
        """One DiagnosticArray: the model/runtime status and one status per camera."""
        name = self.get_fully_qualified_name().lstrip("/")
        # Locals: a lifecycle transition on another executor thread may release them meanwhile.
        state, info, cameras = self.state, self.info, list(self.cameras)
        statuses = [model_status(name, state, info, self.error)]
        if info is None:
            cameras = []
        for cam in cameras:
            snap = cam.pipeline.stats.snapshot()
            extra = {
                "lifecycle_state": state,
                "frame_index": cam.pipeline.frame_index,
                "sequence_id": cam.pipeline.sequence_id,
                "mask_labels": cam.pipeline.masks.num_labels,
                "mask_failures": cam.pipeline.mask_failures,
            }
            statuses.append(
                camera_status(
                    name,
                    cam.name,
                    snap,
                    cam.last_diag,
                    state == "active",
                    self.diagnostics_config,
                    info,
                    extra,
                )
            )
            cam.last_diag = snap
        header = Header(stamp=self.get_clock().now().to_msg())
        self.pub_diagnostics.publish(DiagnosticArray(header=header, status=statuses))

    # -- services ------------------------------------------------------------------------------
    def _srv_reset(self, request: Any, response: Any) -> Any:
        cams = self.find_cameras(request.camera)
        if not cams:
            response.success, response.message = False, f"unknown camera {request.camera!r}"
            return response
        for cam in cams:
            try:
                response.sequence_id = cam.pipeline.request_reset("service")
            except TimeoutError as exc:
                response.success, response.message = False, f"{cam.name}: {exc}"
                return response
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
        bad = np.flatnonzero(~np.isfinite(xy).all(1))
        hw = cams[0].pipeline.image_hw
        if not len(bad) and hw is not None:
            bad = np.flatnonzero(
                (xy[:, 0] < -0.5)
                | (xy[:, 1] < -0.5)
                | (xy[:, 0] > hw[1] - 0.5)
                | (xy[:, 1] > hw[0] - 0.5)
            )
        if len(bad):
            i = int(bad[0])
            where = (
                "non-finite"
                if not np.isfinite(xy[i]).all()
                else f"outside the {hw[1]}x{hw[0]} image"
            )
            response.success = False
            response.message = f"query {i} ({xy[i, 0]:g}, {xy[i, 1]:g}) is {where}"
            return response
        try:
            response.ids = cams[0].pipeline.add_queries(xy)
        except TimeoutError as exc:
            response.success, response.message = False, f"{cams[0].name}: {exc}"
            return response
        response.success = True
        response.message = f"{len(xy)} queries added to {cams[0].name}"
        return response

    def _srv_remove_tracks(self, request: Any, response: Any) -> Any:
        cams = self.find_cameras(request.camera)
        if not cams:
            response.success, response.message = False, f"unknown camera {request.camera!r}"
            return response
        response.removed = 0
        for cam in cams:
            try:
                response.removed += cam.pipeline.remove_tracks(request.ids)
            except TimeoutError as exc:
                response.success, response.message = False, f"{cam.name}: {exc}"
                return response
        response.success = True
        response.message = f"removed {response.removed}"
        return response

    def _srv_set_mask(self, cam: _Camera, request: Any, response: Any) -> Any:
        """Check the seed (label image, boxes, points) and queue it; never raises."""
        try:
            labels, shapes = _seed_from_request(
                request, cam.pipeline.image_hw, self.params["masks.max_pixels"]
            )
        except (ImageError, ValueError) as exc:
            response.success, response.message = False, f"{cam.name}: {exc}"
            self._warn("set_mask", f"{cam.name}: set_mask refused: {exc}")
            return response
        try:
            cam.pipeline.set_mask(labels, shapes)
        except TimeoutError as exc:
            response.success, response.message = False, f"{cam.name}: {exc}"
            return response
        ids = set() if labels is None else set(np.unique(labels).tolist())
        ids |= {int(p[2]) for p in shapes.points} | {int(b[4]) for b in shapes.boxes}
        ids.discard(0)
        response.success, response.num_labels = True, len(ids)
        response.message = f"{cam.name}: mask with {len(ids)} labels from the next frame"
        return response

    def destroy_node(self) -> None:
        self._deactivate()
        self._release()
        super().destroy_node()


def _mono8(labels: np.ndarray) -> dict[str, Any]:
    """Label ids uint8 [H,W] -> sensor_msgs/Image fields (mono8)."""
    h, w = labels.shape
    data = np.ascontiguousarray(labels, np.uint8).tobytes()
    return dict(height=h, width=w, encoding="mono8", is_bigendian=0, step=w, data=data)


def _seed_from_request(
    request: Any, image_hw: tuple[int, int] | None, max_pixels: int
) -> tuple[np.ndarray | None, Shapes]:
    """SetMask request -> (label ids [H,W] or None, shapes); raises ImageError/ValueError."""
    msg = request.labels
    labels = None
    if msg.height or msg.width or len(msg.data):
        labels = decode_labels(msg, max_pixels)
        if image_hw is not None and labels.shape != tuple(image_hw):
            raise ValueError(
                f"label image {labels.shape[1]}x{labels.shape[0]} does not match the camera's "
                f"{image_hw[1]}x{image_hw[0]}"
            )
    n_box = len(request.box_labels)
    box_cols = (request.box_x0, request.box_y0, request.box_x1, request.box_y1)
    if any(len(c) != n_box for c in box_cols):
        raise ValueError("box_x0, box_y0, box_x1, box_y1 and box_labels differ in length")
    n_pt = len(request.point_labels)
    if len(request.point_x) != n_pt or len(request.point_y) != n_pt:
        raise ValueError("point_x, point_y and point_labels differ in length")
    shapes = Shapes(
        points=tuple(
            (float(x), float(y), int(v))
            for x, y, v in zip(request.point_x, request.point_y, request.point_labels)
        ),
        boxes=tuple(
            (float(a), float(b), float(c), float(d), int(v))
            for a, b, c, d, v in zip(*box_cols, request.box_labels)
        ),
        radius=float(request.point_radius) or 8.0,
    )
    shapes.check()
    if labels is None and not shapes:
        raise ValueError("empty seed: give a label image, boxes or points")
    if labels is not None and not labels.any() and not shapes:
        raise ValueError("the label image has no object (all 0)")
    return labels, shapes


def main(args: list[str] | None = None) -> int:
    """Console entry point ``rvm_node`` (ROS arguments: ``--ros-args ...``)."""
    from rclpy.executors import ExternalShutdownException

    from rvm_ros.dds import use_rvm_dds_profile

    use_rvm_dds_profile()  # before rclpy.init: large raw frames over shared memory
    rclpy.init(args=args)
    node = None
    try:
        node = RVMNode()
    except Exception as exc:  # configure/activate failed: one line, not a traceback
        print(f"rvm_node: error: {first_line(exc)}", file=sys.stderr)
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
