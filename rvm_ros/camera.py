"""One camera stream of the node, without ROS: newest-frame slot, decode, model step, tracks.

``CameraPipeline`` is what the node (``rvm_ros.node``) and ``rvm-ros bag-eval`` both run, so a bag
replay goes through exactly the node's processing. Thread model: ``submit`` is called from the
ROS executor thread and only stores the message (decoding happens in ``process``, on the worker
thread, so the executor never blocks on a large image); ``take``/``process`` run on the worker.
Only the worker touches the tracker and the mask: the service methods (``add_queries``,
``remove_tracks``, ``request_reset``, ``set_mask``) hand their change to it through a
:class:`~rvm_ros.worker_queue.WorkerQueue` and wait for its answer (or apply it themselves when
no worker is attached, e.g. the node inactive or an offline replay).

Frames whose size differs from the model's fixed camera input (the ONNX graph has static
shapes) are resized with OpenCV (INTER_AREA when shrinking, INTER_LINEAR otherwise) before the
step; feature geometry and track positions are always reported in *source-image* pixels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rvm_ros.image_codec import ImageError, decode_compressed, decode_image
from rvm_ros.masks import MaskTracker, Shapes
from rvm_ros.parameters import PARAMETERS, default
from rvm_ros.stats import CameraStats
from rvm_ros.worker_queue import WorkerQueue

# How long a service waits for the worker to take its request: one frame's processing is far
# less, so hitting this means the worker is stuck.
REQUEST_TIMEOUT_S = 5.0


class Runtime(Protocol):
    """What the pipeline needs from ``rvm_ros.runtime.RVMRuntime``."""

    metadata: Any  # rvm_ros.runtime.ModelMetadata: its model_id checks a trained readout

    def step(self, image: np.ndarray, stream: str = ...) -> np.ndarray: ...

    def reset(self, stream: str = ...) -> None: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Per-camera processing settings: the node parameters marked ``pipeline`` in
    ``rvm_ros.parameters`` (``tracks.max`` -> ``tracks_max``), with their defaults."""

    max_image_pixels: int = default("max_image_pixels")
    depth_max: int = default("depth_max")
    reset_on_time_jump: bool = default("reset_on_time_jump")
    max_gap_sec: float = default("max_gap_sec")
    tracks_grid: tuple[int, int] = tuple(default("tracks.grid"))  # (0, 0): no seeding
    tracks_max: int = default("tracks.max")
    tracks_reseed_when_lost: bool = default("tracks.reseed_when_lost")
    tracks_lost_frames: int = default("tracks.lost_frames")
    tracks_method: str = default("tracks.method")
    masks_context: int = default("masks.context")
    masks_method: str = default("masks.method")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PipelineConfig:
        """From node parameters by ROS name (``tracks.max``, ...); absent ones keep defaults."""
        kw = {
            name.replace(".", "_"): params[name]
            for name, p in PARAMETERS.items()
            if p.pipeline and name in params
        }
        if "tracks_grid" in kw:
            grid = list(kw["tracks_grid"]) + [0, 0]  # a short list (e.g. []) disables seeding
            kw["tracks_grid"] = (int(grid[0]), int(grid[1]))
        return cls(**kw)


@dataclass
class Result:
    """Everything the node publishes for one processed frame."""

    header: Any
    features: np.ndarray  # [D,h,w] as returned by the runtime
    image: np.ndarray  # RGB uint8 [H,W,3] source frame (for the debug image)
    image_hw: tuple[int, int]
    frame_index: int
    sequence_id: int
    ids: np.ndarray  # [N] uint32 public track ids
    xy: np.ndarray  # [N,2] float32 source pixels
    visible: np.ndarray  # [N] bool
    visibility: np.ndarray  # [N] float32 in [0,1]
    age: np.ndarray  # [N] uint32
    step_s: float  # model step time
    t_taken: float  # time.time() when the worker took the frame
    reset_reason: str | None = None


@dataclass
class _Pending:
    msg: Any
    compressed: bool
    t_received: float
    seq: int  # arrival number of this frame on this camera
    newest: int = 0  # arrival number of the newest frame when the worker took this one


def stamp_sec(header: Any) -> float:
    """builtin_interfaces/Time of a header -> seconds (float)."""
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def grid_points(image_hw: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Centres of a rows x cols grid of equal cells over the image -> [rows*cols, 2] (x, y) px."""
    from rvm_core.readout.tracker import grid_to_pixel

    rows, cols = grid
    gy, gx = np.mgrid[0:rows, 0:cols]
    return grid_to_pixel(np.stack([gx.ravel(), gy.ravel()], 1), image_hw, grid)


@dataclass
class _Tracks:
    """Public-id bookkeeping over a PointTracker (whose own ids restart with the tracker)."""

    next_id: int = 0
    public: dict[int, int] = field(default_factory=dict)  # tracker id -> public id
    lost: dict[int, int] = field(default_factory=dict)  # public id -> consecutive lost frames
    seeded: dict[int, int] = field(default_factory=dict)  # public id -> grid cell (auto seeds)
    pending: list[tuple[int, float, float]] = field(default_factory=list)  # (id, x, y) to add


class CameraPipeline:
    """Per-camera state: latest-frame slot, recurrent stream, tracker, sequence/frame counters."""

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        config: PipelineConfig | None = None,
        input_hw: tuple[int, int] | None = None,
        warn: Callable[[str, str], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        """``wake``: called when a service queues a request, so an idle worker runs it now."""
        from rvm_core.readout.tracker import PointTracker, TrackerConfig

        self.name = name
        self.runtime = runtime
        self.config = config or PipelineConfig()
        self.input_hw = input_hw  # the model's fixed camera size; None: any size
        self.warn = warn or (lambda reason, text: None)
        self.stats = CameraStats()
        self._lock = threading.Lock()  # guards the newest-frame slot only
        self._requests = WorkerQueue(wake)  # service changes to the worker-owned state below
        self._slot: _Pending | None = None
        self._arrivals = 0
        self._tracker = PointTracker(
            TrackerConfig(method=self.config.tracks_method, model_id=runtime.metadata.model_id)
        )
        self._tracks = _Tracks()
        self.sequence_id = 0
        self.frame_index = 0  # index the next processed frame gets
        self._last_stamp: float | None = None
        self._last_hw: tuple[int, int] | None = None
        self._reset_requested: str | None = None
        self.masks = MaskTracker(self.config.masks_context, self.config.masks_method)
        self.mask_failures = 0  # seeds that did not fit their frame, propagation errors

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """Size of the last processed frame (None before the first)."""
        return self._last_hw

    # -- executor side -----------------------------------------------------------------------
    def submit(self, msg: Any, compressed: bool = False) -> None:
        """Store ``msg`` as the newest frame; an unprocessed older frame is dropped (counted)."""
        self.stats.received()
        with self._lock:
            self._arrivals += 1
            if self._slot is not None:
                self.stats.dropped()
            self._slot = _Pending(msg, compressed, time.time(), self._arrivals)

    def has_frame(self) -> bool:
        return self._slot is not None

    def take(self) -> _Pending | None:
        """Pop the newest frame (worker side); ``item.newest`` = arrivals at that moment."""
        with self._lock:
            item, self._slot = self._slot, None
            if item is not None:
                item.newest = self._arrivals
        return item

    # -- services (any thread) -------------------------------------------------------------
    def request_reset(self, reason: str = "service") -> int:
        """Reset before the next processed frame -> the sequence id that frame will carry."""
        return self._requests.call(lambda: self._queue_reset(reason), REQUEST_TIMEOUT_S)

    def set_mask(self, labels: np.ndarray | None, shapes: Shapes | None = None) -> None:
        """Start propagating a seed (label ids [H,W] and/or shapes) from the next frame."""
        self._requests.call(lambda: self.masks.set(labels, shapes), REQUEST_TIMEOUT_S)

    def add_queries(self, xy: np.ndarray) -> np.ndarray:
        """Queue points [K,2] (x, y source px) for the next processed frame -> public ids [K]."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return self._requests.call(lambda: self._queue_queries(xy), REQUEST_TIMEOUT_S)

    def remove_tracks(self, ids: Any) -> int:
        """Stop tracking public ids (pending or active) -> number actually removed."""
        ids = {int(i) for i in ids}
        return self._requests.call(lambda: self._remove_tracks(ids), REQUEST_TIMEOUT_S)

    # -- worker side -------------------------------------------------------------------------
    def attach_worker(self) -> None:
        """The calling thread becomes the only one that touches tracker and mask state."""
        self._requests.attach()

    def detach_worker(self) -> None:
        """Stop owning (requests queued meanwhile are applied first); services apply directly."""
        self._requests.detach()

    def apply_requests(self) -> None:
        """Apply the queued service requests (worker, between frames)."""
        self._requests.run_pending()

    def _queue_reset(self, reason: str) -> int:
        self._reset_requested = reason
        self._tracks.pending.clear()
        self.masks.clear()
        return (self.sequence_id + 1) & 0xFFFFFFFF

    def _queue_queries(self, xy: np.ndarray) -> np.ndarray:
        t = self._tracks
        ids = np.arange(t.next_id, t.next_id + len(xy), dtype=np.int64)
        t.next_id += len(xy)
        t.pending.extend((int(i), float(x), float(y)) for i, (x, y) in zip(ids, xy))
        return ids.astype(np.uint32)

    def _remove_tracks(self, ids: set[int]) -> int:
        t = self._tracks
        before = len(t.pending)
        t.pending = [p for p in t.pending if p[0] not in ids]
        removed = before - len(t.pending)
        tracker_ids = [k for k, v in t.public.items() if v in ids]
        if tracker_ids:
            self._tracker.remove(tracker_ids)
            for k in tracker_ids:
                pid = t.public.pop(k)
                t.lost.pop(pid, None)
                t.seeded.pop(pid, None)
        return removed + len(tracker_ids)

    def _reset(self, reason: str) -> None:
        self.runtime.reset(stream=self.name)
        self._tracker.reset()
        self.masks.clear(keep_pending=True)  # a seed queued for the coming frame still applies
        t = self._tracks
        t.public.clear()
        t.lost.clear()
        t.seeded.clear()
        self.sequence_id = (self.sequence_id + 1) & 0xFFFFFFFF
        self.frame_index = 0
        self.stats.reset()
        self.warn("reset", f"{self.name}: state reset ({reason}), sequence {self.sequence_id}")

    def decode(self, item: _Pending) -> np.ndarray | None:
        """Message -> RGB uint8 [H,W,3], or None (rejection counted and warned)."""
        cfg = self.config
        try:
            if item.compressed:
                return decode_compressed(item.msg, max_pixels=cfg.max_image_pixels)
            return decode_image(item.msg, max_pixels=cfg.max_image_pixels, depth_max=cfg.depth_max)
        except ImageError as exc:
            self.stats.reject(exc.reason)
            self.warn(exc.reason, f"{self.name}: rejected image: {exc}")
        except Exception as exc:  # hostile input must never kill the worker
            self.stats.reject("invalid")
            self.warn("invalid", f"{self.name}: rejected image: {type(exc).__name__}: {exc}")
        return None

    def process(self, item: _Pending, track: bool = True) -> Result | None:
        """Decode, reset if needed, step the model, run the tracker -> Result (None: rejected)."""
        t_taken = time.time()
        rgb = self.decode(item)
        if rgb is None:
            return None
        header = item.msg.header
        stamp = stamp_sec(header)
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        reason, self._reset_requested = self._reset_requested, None
        cfg = self.config
        if reason is None and self.frame_index > 0:
            if self._last_hw != hw:
                reason = f"image size changed {self._last_hw} -> {hw}"
            elif cfg.reset_on_time_jump and self._last_stamp is not None:
                if stamp < self._last_stamp:
                    reason = f"time jumped back {self._last_stamp - stamp:.3f} s"
                elif stamp - self._last_stamp > cfg.max_gap_sec:
                    reason = f"gap of {stamp - self._last_stamp:.3f} s > max_gap_sec"
        if reason is not None:
            self._reset(reason)
        self._last_stamp, self._last_hw = stamp, hw

        t0 = time.perf_counter()
        features = self.runtime.step(self._model_input(rgb), stream=self.name)
        step_s = time.perf_counter() - t0
        empty = np.zeros(0)
        result = Result(
            header=header,
            features=features,
            image=rgb,
            image_hw=hw,
            frame_index=self.frame_index,
            sequence_id=self.sequence_id,
            ids=empty.astype(np.uint32),
            xy=np.zeros((0, 2), np.float32),
            visible=empty.astype(bool),
            visibility=empty.astype(np.float32),
            age=empty.astype(np.uint32),
            step_s=step_s,
            t_taken=t_taken,
            reset_reason=reason,
        )
        self.frame_index += 1
        if track:
            self.track(result)
        return result

    def track(self, result: Result) -> Result:
        """Run the tracker on a processed frame's features, filling the result's track fields.

        Separate from the model step so the node can publish the features first (the tracker
        adds its time to the tracks only, not to the features' latency).
        """
        ids, xy, vis, score, age = self._track(result.features, result.image)
        result.ids, result.xy, result.visible, result.visibility, result.age = (
            ids,
            xy,
            vis,
            score,
            age,
        )
        return result

    def update_mask(self, result: Result, want_image: bool = True) -> np.ndarray | None:
        """Step the mask on a processed frame -> label ids uint8 [H,W] (None: no mask, not
        wanted, or a failure, which is warned and counted)."""
        try:
            return self.masks.update(result.features, result.image, want_image)
        except Exception as exc:  # a bad seed must not stop the camera
            self.masks.clear(keep_pending=True)
            self.mask_failures += 1
            self.warn("mask", f"{self.name}: mask dropped: {exc}")
            return None

    def _model_input(self, rgb: np.ndarray) -> np.ndarray:
        """Resize to the graph's fixed camera size if needed (INTER_AREA when shrinking)."""
        if self.input_hw is None or rgb.shape[:2] == tuple(self.input_hw):
            return rgb
        import cv2

        h, w = self.input_hw
        shrink = h * w < rgb.shape[0] * rgb.shape[1]
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def _track(self, features: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, ...]:
        """Advance tracks, drop long-lost ones, add queued queries and grid seeds -> arrays."""
        cfg = self.config
        hw = rgb.shape[:2]
        fmap = np.moveaxis(features, 0, -1)  # [h,w,D] view, as the tracker expects
        method = cfg.tracks_method
        feat_arg = None if method in ("lk", "dis") else fmap
        img_arg = None if method == "rvm" else rgb
        tr, t = self._tracker, self._tracks
        st = tr.update(feat_arg, img_arg, image_hw=hw)
        # Drop tracks invisible for too long (they get re-seeded below if auto-seeded).
        gone = []
        for k, v in zip(st.ids.tolist(), st.visible.tolist()):
            pid = t.public[k]
            t.lost[pid] = 0 if v else t.lost.get(pid, 0) + 1
            if t.lost[pid] > cfg.tracks_lost_frames:
                gone.append(k)
        if gone:
            tr.remove(gone)
            for k in gone:
                pid = t.public.pop(k)
                t.lost.pop(pid, None)
                t.seeded.pop(pid, None)
        new_pids: list[int] = []
        new_xy: list[tuple[float, float]] = []
        room = cfg.tracks_max - len(tr)
        for pid, x, y in t.pending[: max(room, 0)]:
            new_pids.append(pid)
            new_xy.append((x, y))
        t.pending = t.pending[max(room, 0) :]
        rows, cols = cfg.tracks_grid
        if rows > 0 and cols > 0 and (cfg.tracks_reseed_when_lost or self.frame_index == 0):
            taken = set(t.seeded.values())
            pts = grid_points(hw, (rows, cols))
            for cell, (x, y) in enumerate(pts):
                if cell in taken or len(tr) + len(new_pids) >= cfg.tracks_max:
                    continue
                pid = t.next_id
                t.next_id += 1
                t.seeded[pid] = cell
                new_pids.append(pid)
                new_xy.append((float(x), float(y)))
        if new_pids:
            tids = tr.add(np.asarray(new_xy))  # uses the frame just given to update()
            for k, pid in zip(tids.tolist(), new_pids):
                t.public[k] = pid
                t.lost[pid] = 0
        st = tr.state()
        ids = np.array([t.public[k] for k in st.ids.tolist()], np.uint32)
        return (
            ids,
            st.xy.astype(np.float32),
            st.visible.copy(),
            np.clip(st.score, 0.0, 1.0).astype(np.float32),
            st.age.astype(np.uint32),
        )
