"""rvm_node with real rclpy, real messages and real ONNX Runtime sessions (small random models).

The node runs in the test process (its worker thread plus the test's executor), so tests can
compare against a second runtime and read the node's bounded processing trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from benchmarks.common import child_env, module_command
from rvm_ros.camera import CameraPipeline, PipelineConfig
from rvm_ros.image_codec import encode_image
from rvm_ros.launch_args import default_model_path
from rvm_ros.messages import features_from_msg
from rvm_ros.msg import FeatureMap, NodeStats, PointTracks
from rvm_ros.node import RVMNode, load_runtime
from rvm_ros.parameters import PARAMETERS
from rvm_ros.runtime import RVMRuntime
from rvm_ros.srv import AddQueries, RemoveTracks, Reset, SetMask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_calls import change_state, get_state  # noqa: E402
from rvm_test_models import tiny_onnx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
QOS_OUT = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def model64() -> Path:
    return tiny_onnx((64, 64))


def _image(rgb: np.ndarray, stamp_ns: int, frame_id: str = "cam") -> Image:
    msg = Image(**encode_image(rgb))
    msg.header.stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    msg.header.frame_id = frame_id
    return msg


def _node(rclpy_context, executor, model: Path, topics: list[str], **params) -> RVMNode:
    # Tests wait for every frame: reliable inputs through the standard QoS override parameters
    # (the overload test keeps the default best effort).
    reliability = params.pop("qos__reliability", "reliable")
    depth = params.pop("qos__depth", None)
    overrides = [
        Parameter("image_topics", value=topics),
        Parameter("stats_period_sec", value=params.pop("stats_period_sec", 0.0)),
    ]
    for topic in topics:
        key = f"qos_overrides.{topic}.subscription"
        overrides.append(Parameter(f"{key}.reliability", value=reliability))
        if depth is not None:
            overrides.append(Parameter(f"{key}.depth", value=depth))
    overrides += [Parameter(k.replace("__", "."), value=v) for k, v in params.items()]
    node = RVMNode(
        runtime=RVMRuntime(model, device="cpu"),
        context=rclpy_context,
        parameter_overrides=overrides,
    )
    executor.add_node(node)
    return node


@pytest.fixture
def rvm_node(rclpy_context, executor):
    nodes = []

    def make(*args, **kwargs):
        node = _node(rclpy_context, executor, *args, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        executor.remove_node(node)
        node.destroy_node()


class Outputs:
    """Collects FeatureMap/PointTracks of one camera."""

    def __init__(self, node, base: str) -> None:
        self.features: list = []
        self.tracks: list = []
        node.create_subscription(FeatureMap, f"{base}/rvm/features", self.features.append, QOS_OUT)
        node.create_subscription(PointTracks, f"{base}/rvm/tracks", self.tracks.append, QOS_OUT)


def _connect(spin_until, pub, outputs_sub_count) -> None:
    assert spin_until(lambda: pub.get_subscription_count() >= 1, timeout_sec=15.0)
    assert spin_until(outputs_sub_count, timeout_sec=15.0)


def _send(spin_until, pub, msg, outs: Outputs) -> FeatureMap:
    n = len(outs.features)
    pub.publish(msg)
    ok = spin_until(lambda: len(outs.features) > n and len(outs.tracks) > n, timeout_sec=15.0)
    assert ok, "no output for a published frame"
    return outs.features[-1]


def test_end_to_end_matches_runtime(rvm_node, make_node, spin_until, model64):
    node = rvm_node(model64, ["/cam_a/image"])
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/cam_a/image")
    pub = client.create_publisher(Image, "/cam_a/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_features.get_subscription_count() >= 1)

    reference = RVMRuntime(model64, device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    t0 = 1_700_000_000 * 10**9
    for i, frame in enumerate(frames):
        msg = _image(frame, t0 + i * 33_000_000, frame_id="cam_a_optical")
        got = _send(spin_until, pub, msg, outs)
        tracks = outs.tracks[-1]
        want = reference.step(frame, "ref")
        assert got.header == msg.header and tracks.header == msg.header
        assert (got.channels, got.height, got.width) == want.shape
        assert got.dtype == FeatureMap.DTYPE_FLOAT16
        np.testing.assert_allclose(
            features_from_msg(got).astype(np.float32), want.astype(np.float16), rtol=0, atol=1e-3
        )
        assert (got.frame_index, got.sequence_id) == (i, 0)
        assert (got.image_width, got.image_height) == (64, 64)
        assert (got.stride_x, got.stride_y, got.offset_x, got.offset_y) == (8, 8, 3.5, 3.5)
        assert got.model_id == reference.metadata.model_id
        assert len(tracks.ids) == 64 and len(set(tracks.ids)) == 64  # 8x8 auto-seeded grid
        assert tracks.frame_index == i
    assert list(outs.tracks[0].ids) == list(outs.tracks[-1].ids)  # persistent ids
    assert node.cameras[0].pipeline.stats.snapshot().frames_processed == len(frames)


def test_two_cameras_keep_separate_states(rvm_node, make_node, spin_until, model64):
    node = rvm_node(model64, ["/cam_a/image", "/cam_b/image"], tracks__grid=[2, 2])
    client = make_node("rvm_test_client")
    outs = {c: Outputs(client, f"/cam_{c}/image") for c in "ab"}
    pubs = {c: client.create_publisher(Image, f"/cam_{c}/image", QOS) for c in "ab"}
    for c, cam in zip("ab", node.cameras):
        _connect(spin_until, pubs[c], lambda cam=cam: cam.pub_tracks.get_subscription_count() >= 1)

    reference = RVMRuntime(model64, device="cpu")
    rng = np.random.default_rng(1)
    t0 = 1_700_000_000 * 10**9
    for i in range(5):
        for c in "ab":  # interleaved: B's frames must not leak into A's state
            frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            got = _send(spin_until, pubs[c], _image(frame, t0 + i * 10**8), outs[c])
            want = reference.step(frame, c)
            np.testing.assert_allclose(features_from_msg(got).astype(np.float32), want, atol=1e-3)
            assert got.frame_index == i
    a_alone = RVMRuntime(model64, device="cpu")
    rng = np.random.default_rng(1)
    for _ in range(5):
        frame_a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # B's frame, not given to A
        last = a_alone.step(frame_a, "a")
    np.testing.assert_allclose(features_from_msg(outs["a"].features[-1]), last, atol=1e-3)


def test_tracking_error_counts_frame_once(rvm_node, make_node, spin_until, model64):
    node = rvm_node(model64, ["/cam/image"], tracks__grid=[2, 2])
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/cam/image")
    pub = client.create_publisher(Image, "/cam/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_tracks.get_subscription_count() >= 1)

    failed = threading.Event()

    def broken_track(r):
        failed.set()
        raise RuntimeError("tracker broke")

    frames = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    cam.pipeline.track = broken_track  # fails after the features are published
    pub.publish(_image(frames[0], 1_700_000_000 * 10**9))
    assert spin_until(lambda: len(outs.features) == 1 and failed.is_set(), timeout_sec=15.0)
    del cam.pipeline.track
    # The worker handles frames in order: once the next frame is out, the first one is done.
    pub.publish(_image(frames[1], 1_700_000_000 * 10**9 + 10**8))
    assert spin_until(lambda: len(outs.features) == 2 and len(outs.tracks) == 1, timeout_sec=15.0)
    snap = cam.pipeline.stats.snapshot()
    assert (snap.frames_processed, snap.frames_rejected) == (2, 0), snap


def test_services_time_jump_and_stats(rvm_node, make_node, spin_until, model64):
    node = rvm_node(model64, ["/cam/image"], tracks__grid=[2, 2], stats_period_sec=0.3)
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/cam/image")
    stats: list = []
    client.create_subscription(NodeStats, "/rvm_node/stats", stats.append, 10)
    pub = client.create_publisher(Image, "/cam/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_tracks.get_subscription_count() >= 1)
    frame = np.full((64, 64, 3), 128, np.uint8)
    t = [10 * 10**9]

    def send(dt_ns: int = 100_000_000):
        t[0] += dt_ns
        _send(spin_until, pub, _image(frame, t[0]), outs)
        return outs.features[-1], outs.tracks[-1]

    def call(srv_type, name, request):
        cli = client.create_client(srv_type, name)
        assert spin_until(cli.service_is_ready, timeout_sec=10.0)
        fut = cli.call_async(request)
        assert spin_until(fut.done, timeout_sec=10.0)
        return fut.result()

    fm, tr = send()
    assert len(tr.ids) == 4 and fm.sequence_id == 0
    res = call(
        AddQueries, "/rvm_node/add_queries", AddQueries.Request(x=[5.0, 30.0], y=[6.0, 40.0])
    )
    assert res.success and len(res.ids) == 2
    fm, tr = send()
    assert set(res.ids) <= set(tr.ids) and len(tr.ids) == 6
    i = list(tr.ids).index(res.ids[0])
    assert (tr.x[i], tr.y[i], tr.age[i]) == (5.0, 6.0, 0)
    bad = call(AddQueries, "/rvm_node/add_queries", AddQueries.Request(camera="/nope", x=[1.0]))
    assert not bad.success and "/nope" in bad.message
    for x, y, why in ((float("nan"), 1.0, "non-finite"), (70.0, 3.0, "outside the 64x64 image")):
        bad = call(AddQueries, "/rvm_node/add_queries", AddQueries.Request(x=[2.0, x], y=[2.0, y]))
        assert not bad.success and bad.message == f"query 1 ({x:g}, {y:g}) is {why}", bad.message
        assert list(bad.ids) == []
    res2 = call(
        RemoveTracks, "/rvm_node/remove_tracks", RemoveTracks.Request(ids=[res.ids[0], 999])
    )
    assert res2.success and res2.removed == 1
    fm, tr = send()
    assert res.ids[0] not in tr.ids and res.ids[1] in tr.ids

    # Time jump backwards (bag loop) and a long gap both reset: frame_index 0, new sequence.
    fm, _ = send(-5 * 10**9)
    assert (fm.frame_index, fm.sequence_id) == (0, 1)
    fm, _ = send()
    assert (fm.frame_index, fm.sequence_id) == (1, 1)
    fm, _ = send(3 * 10**9)
    assert (fm.frame_index, fm.sequence_id) == (0, 2)
    res3 = call(Reset, "/rvm_node/reset", Reset.Request(camera="/cam/image"))
    assert res3.success and res3.sequence_id == 3
    fm, _ = send()
    assert (fm.frame_index, fm.sequence_id) == (0, 3)
    trig = call(Trigger, "/cam/image/rvm/reset", Trigger.Request())
    assert trig.success
    fm, _ = send()
    assert (fm.frame_index, fm.sequence_id) == (0, 4)

    assert spin_until(lambda: any(s.frames_processed >= 8 for s in stats), timeout_sec=5.0)
    s = stats[-1]
    assert s.camera == "/cam/image" and s.frames_in == s.frames_processed == 8
    assert s.latency_p50_ms > 0 and s.frames_rejected == 0


def _hostile(rng: np.random.Generator, i: int) -> Image:
    """One malformed or hostile sensor_msgs/Image."""
    kind = i % 8
    h, w = int(rng.integers(1, 80)), int(rng.integers(1, 80))
    data = rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data)
    if kind == 0:
        msg.height = 0
    elif kind == 1:
        msg.height, msg.width, msg.step = 2**31 - 1, 2**31 - 1, 2**32 - 1  # huge claimed size
    elif kind == 2:
        msg.step = max(0, w * 3 - int(rng.integers(1, 4)))  # step too small
    elif kind == 3:
        msg.data = data[: int(rng.integers(0, len(data)))]  # truncated
    elif kind == 4:
        msg.encoding = str(rng.choice(["32FC1", "", "jpeg", "x" * 500, "64FC3"]))
    elif kind == 5:
        msg.encoding, msg.width, msg.step = "yuyv", w | 1, (w | 1) * 2  # odd width: no pairs
    elif kind == 6:
        msg.encoding, msg.step, msg.is_bigendian = "mono16", w, 1  # step < 2 bytes per pixel
    elif kind == 7:
        msg.data = b""  # empty data, non-empty size
    return msg


def test_fuzz_hostile_images(rvm_node, make_node, spin_until, model64):
    """1200 hostile images: 600 through the subscription (rclpy), 600 through the pipeline."""
    # A deeper input queue so that (almost) every hostile message reaches the node's slot.
    # Two cameras (one raw, one compressed): two transports of one camera are refused.
    node = rvm_node(
        model64, ["/fuzz/image", "/fuzz_c/image/compressed"], tracks__grid=[2, 2], qos__depth=100
    )
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/fuzz/image")
    pub = client.create_publisher(Image, "/fuzz/image", QOS)
    cpub = client.create_publisher(CompressedImage, "/fuzz_c/image/compressed", QOS)
    cam, ccam = node.cameras
    _connect(spin_until, pub, lambda: cam.pub_features.get_subscription_count() >= 1)
    assert spin_until(lambda: cpub.get_subscription_count() >= 1, timeout_sec=10.0)
    rng = np.random.default_rng(2)
    valid = np.full((64, 64, 3), 77, np.uint8)
    t0 = 1_700_000_000 * 10**9
    sent, valid_sent = 0, 0
    for i in range(600):
        pub.publish(_hostile(rng, i))
        data = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        fmt = ["jpeg", "png", "", "bmp"][i % 4]
        if i % 3 == 0:  # PNG/JPEG signatures with garbage or bomb-sized headers
            data = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + b"\x7f\xff\xff\xff" * 2) + data
        elif i % 3 == 1:
            data = b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff" + data
        cpub.publish(CompressedImage(format=fmt, data=data))
        sent += 1
        spin_until(lambda: False, timeout_sec=0.001)  # let the callbacks run
        if i % 50 == 49:  # valid frames keep being served in between
            _send(spin_until, pub, _image(valid, t0 + i * 10**7), outs)
            valid_sent += 1
    _send(spin_until, pub, _image(valid, t0 + 10**9), outs)
    valid_sent += 1
    assert spin_until(lambda: not cam.pipeline.has_frame() and not ccam.pipeline.has_frame(), 10.0)
    time.sleep(0.3)
    for c, n_sent, n_valid in ((cam, sent + valid_sent, valid_sent), (ccam, sent, 0)):
        s = c.pipeline.stats.snapshot()
        assert s.frames_in <= n_sent and s.frames_in >= 0.9 * n_sent
        # "rgb8\x00" arrives as "rgb8" (DDS strings end at NUL): valid frames of random sizes.
        assert s.frames_processed >= n_valid
        assert s.frames_rejected + s.frames_dropped + s.frames_processed == s.frames_in
        assert s.frames_rejected >= 0.75 * (n_sent - n_valid)
        print(c.name, s.line())
    assert node._worker.is_alive()

    # 600 more straight into a pipeline (same runtime, own stream): every one examined.
    pl = CameraPipeline("direct", node.runtime, PipelineConfig(tracks_grid=(2, 2)), (64, 64))
    for i in range(600):
        pl.submit(_hostile(rng, i))
        assert pl.process(pl.take()) is None
    assert pl.stats.snapshot().frames_rejected == 600
    assert set(pl.stats.snapshot().rejected_by_reason) >= {
        "empty",
        "too_large",
        "step",
        "truncated",
    }
    pl.submit(_image(valid, t0))
    assert pl.process(pl.take()).features.shape == (32, 8, 8)


def test_size_change_mid_stream_resets_and_resizes(model64):
    rt = RVMRuntime(model64, device="cpu")
    pl = CameraPipeline("cam", rt, PipelineConfig(tracks_grid=(2, 2)), (64, 64))
    t0 = 10**18
    for i, (h, w) in enumerate([(64, 64), (64, 64), (48, 80), (48, 80)]):
        pl.submit(_image(np.zeros((h, w, 3), np.uint8), t0 + i * 10**7))
        r = pl.process(pl.take())
        assert r.image_hw == (h, w) and r.features.shape == (32, 8, 8)
        assert np.all(r.xy[:, 0] < w) and np.all(r.xy[:, 1] < h)  # tracks in source pixels
    assert (r.frame_index, r.sequence_id) == (1, 1)


def test_trained_readout_of_another_model_is_refused_at_configure(model64):
    """The shipped readout was trained on the shipped model's features, not this export's."""
    from rvm_core.readout.trained_io import ReadoutMismatchError

    rt = RVMRuntime(model64, device="cpu")
    with pytest.raises(ReadoutMismatchError, match="was trained on model .* not tiny-"):
        CameraPipeline("cam", rt, PipelineConfig(tracks_method="trained"), (64, 64))


def test_slot_keeps_only_newest(model64):
    pl = CameraPipeline("cam", RVMRuntime(model64, device="cpu"), input_hw=(64, 64))
    for i in range(5):
        pl.submit(_image(np.zeros((64, 64, 3), np.uint8), 10**18 + i))
    item = pl.take()
    assert item.seq == 5 and pl.take() is None
    s = pl.stats.snapshot()
    assert (s.frames_in, s.frames_dropped) == (5, 4)


def test_overload_newest_frames_bounded_memory_latency(rvm_node, make_node, executor):
    """Frames at >= 2.5x the node's capacity for 30 s: newest-only, bounded RSS, p95 <= 2 steps.

    The publisher is another process (own GIL). "One step" is the node's whole per-frame work
    measured in the same run: 1 / its saturated capacity (decode, model step, FeatureMap
    publication, then tracking), at least the median decode + step + publication time;
    latency is from the frame's stamp (= its publication time) to its FeatureMap's publication.
    Age of a processed frame: arrivals on the camera when the worker took it minus the frame's
    arrival number (the node's view) and, stricter, frames *published* before it was taken minus
    the frame's own publish index (also counts frames still in DDS or the executor).
    """
    model = tiny_onnx((240, 320), width=96, layers=3, model_hw=(128, 128))
    node = rvm_node(model, ["/load/image"], qos__reliability="best_effort")
    cam = node.cameras[0]
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def play(seconds: float, rate: float) -> np.ndarray:
        """Publish at ``rate`` Hz from another process -> publish times (s, = stamps)."""
        out = Path(tempfile.mkdtemp()) / "times.npy"
        # The benchmark's publisher process (random 240x320 rgb8 frames, reliable QoS).
        cmd = module_command("node", "--publish", "/load/image")
        proc = subprocess.run(
            cmd + [str(seconds), str(rate), "240", "320", str(out)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env=child_env({**os.environ, "RVM_BENCH_RELIABILITY": "reliable"}),
        )
        assert proc.returncode == 0, proc.stderr
        return np.load(out)

    def capacity_at(rate: float) -> float:
        """Frames/s the worker completes while frames always wait, over the processed span."""
        n0 = len(node.trace)
        play(3.0, rate)
        warm = list(node.trace)[n0:]
        assert len(warm) > 10
        return (len(warm) - 1) / (warm[-1].t_taken - warm[0].t_taken)

    # A 300 Hz publisher takes CPU from the node on 2 cores, so capacity measured under it is
    # low; measure again under a lighter load. Calibration on a shared machine can still be off
    # by ~40% (measured: 36 fps calibrated, 51 fps in the run), so the test publishes at 3.5x and
    # checks the overload it actually achieved (>= 2.5x the frames the node processed).
    calibrated = capacity_at(3.0 * capacity_at(300.0))

    rss: list[float] = []
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set():
            with open(f"/proc/{os.getpid()}/statm") as f:
                rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
            stop.wait(1.0)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    n0 = len(node.trace)
    pub = play(30.0, 3.5 * calibrated)
    time.sleep(1.0)
    stop.set()
    sampler.join()

    snap = cam.pipeline.stats.snapshot()
    trace = list(node.trace)[n0:]
    stamp, t_taken, t_pub, proc_s, step_s = (
        np.array([getattr(t, k) for t in trace])
        for k in ("stamp", "t_taken", "t_published", "proc_s", "step_s")
    )
    age_rx = np.array([t.newest - t.seq for t in trace])
    own = np.abs(pub[None, :] - stamp[:, None]).argmin(1)  # each frame's publish index
    age_pub = np.searchsorted(pub, t_taken, side="right") - 1 - own
    lat = t_pub - stamp
    capacity = (len(trace) - 1) / (t_taken[-1] - t_taken[0])  # saturated: frames always wait
    # One step = the node's whole per-frame work (decode, model, FeatureMap publication and the
    # tracker that runs after it) = 1 / capacity: a frame arriving while the worker is busy waits
    # for the rest of that cycle, so latency is up to ~2 cycles by construction.
    step = max(float(np.median(proc_s)), 1.0 / capacity)
    p95 = float(np.percentile(lat, 95))
    print(
        f"overload: step {step * 1e3:.1f} ms (model {np.median(step_s) * 1e3:.1f}), capacity "
        f"{capacity:.1f} fps (calibrated {calibrated:.1f}), published {len(pub)} at "
        f"{len(pub) / 30:.1f} fps, processed "
        f"{len(trace)} ({len(trace) / 30:.1f} fps), dropped {snap.frames_dropped}, age max "
        f"{age_rx.max()} (published: max {age_pub.max()} p99 {np.percentile(age_pub, 99):.0f}), "
        f"latency p50 {np.percentile(lat, 50) * 1e3:.1f} p95 {p95 * 1e3:.1f} ms, RSS "
        f"{rss[0]:.0f}..{max(rss):.0f} MB"
    )
    assert len(pub) > 2.5 * len(trace), "not overloaded"
    assert len(trace) > 0.5 * capacity * 30
    assert age_rx.max() <= 2, f"a processed frame was {age_rx.max()} frames old"
    # Age in frames grows with the publish rate for the same delay (calibration can overshoot to
    # ~400 fps: 2.6 ms per frame). A queue before the node holds frames for whole steps, so the
    # bound is what one step of delay is worth in frames at the rate achieved (at least 2).
    max_age = max(2, int(step * len(pub) / 30.0))
    assert np.percentile(age_pub, 99) <= max_age, (
        f"frames queue before the node (DDS or executor): p99 age > {max_age}"
    )
    assert p95 <= 2 * step + 0.005, f"latency p95 {p95 * 1e3:.1f} ms > 2 steps ({step * 1e3:.1f})"
    # Memory: no growth after warm-up (a queue of 240x320 frames would grow ~20 MB/s).
    assert max(rss[10:]) - rss[10] < 30, f"RSS grew {rss[10]:.0f} -> {max(rss[10:]):.0f} MB"


def test_warmup_steps_parameter_reaches_the_runtime():
    """-1 (the default) takes the model file's warm start; the shipped model was exported with
    it (3 = num_source - 1); an explicit count overrides it."""
    path = default_model_path()
    runtime, _ = load_runtime(path, "cpu", 1, -1)
    assert runtime.metadata.warmup_steps == 3 and runtime.warmup == 3
    assert load_runtime(path, "cpu", 1, 0)[0].warmup == 0


def _run_node(*ros_args: str) -> subprocess.CompletedProcess:
    cmd = [str(REPO / ".venv" / "bin" / "rvm_node"), "--ros-args", *ros_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not_rvm"])
def test_bad_model_exits_with_one_line(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "corrupt":
        path.write_bytes(b"\x08\x07garbage" * 100)
    elif kind == "not_rvm":
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
        graph.output[0].name = "y"
        onnx.save(helper.make_model(graph), str(path))
    proc = _run_node("-p", f"model_path:={path}")
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"rvm_node: error: cannot load model '{path}': ")


def test_deployment_imports_no_torch():
    code = (
        "import sys; import rvm_ros.node, rvm_ros.runtime, rvm_ros.camera, rvm_ros.messages, "
        "rvm_ros.image_codec, rvm_ros.visualize, rvm_core.readout.tracker, rvm_ros.bag_eval, "
        "rvm_ros.demo, rvm_core.data.video; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- diagnostics, lifecycle, QoS overrides, masks -------------------------------------------------
def _levels(arrays: list, camera: str) -> list[bytes]:
    """Levels of one camera's status over the received DiagnosticArrays, in order."""
    return [s.level for a in arrays for s in a.status if s.hardware_id == camera]


def test_diagnostics_per_camera_ok_then_warn_and_stale(rvm_node, make_node, spin_until, model64):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    node = rvm_node(
        model64,
        ["/diag_a/image", "/diag_b/image"],
        tracks__grid=[2, 2],
        diagnostics__period_sec=0.2,
        diagnostics__warn_after_sec=0.6,
        diagnostics__stale_after_sec=1.5,
    )
    client = make_node("rvm_test_client")
    arrays: list = []
    client.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
    outs = Outputs(client, "/diag_a/image")
    pub = client.create_publisher(Image, "/diag_a/image", QOS)
    _connect(spin_until, pub, lambda: node.cameras[0].pub_tracks.get_subscription_count() >= 1)
    frame = np.full((64, 64, 3), 90, np.uint8)
    for _ in range(5):  # camera a gets frames (stamped now), camera b never does
        _send(spin_until, pub, _image(frame, time.time_ns()), outs)
    n = len(arrays)
    assert spin_until(lambda: len(arrays) >= n + 1, timeout_sec=5.0)
    last = arrays[-1]
    by_cam = {s.hardware_id: s for s in last.status}
    a, b = by_cam["/diag_a/image"], by_cam["/diag_b/image"]
    assert a.level == DiagnosticStatus.OK, a
    assert b.level == DiagnosticStatus.STALE and "no frames" in b.message
    values = {kv.key: kv.value for kv in a.values}
    assert values["frames_processed"] == "5" and values["frames_in"] == "5"
    assert values["provider"] == "CPUExecutionProvider" and values["device"] == "cpu"
    assert values["model_id"] == node.model.model_id
    assert {"fps", "latency_p50_ms", "latency_p95_ms", "frames_dropped", "resets"} <= set(values)
    assert float(values["latency_p50_ms"]) > 0
    (model,) = [s for s in last.status if s.name.endswith(": model")]
    assert model.level == DiagnosticStatus.OK and node.model.model_id in model.message

    # Frames stop: camera a turns WARN, then STALE.
    assert spin_until(
        lambda: DiagnosticStatus.STALE in _levels(arrays[n:], "/diag_a/image"), timeout_sec=10.0
    )
    seq = _levels(arrays[n:], "/diag_a/image")
    assert DiagnosticStatus.WARN in seq
    assert seq.index(DiagnosticStatus.WARN) < seq.index(DiagnosticStatus.STALE)
    # A rejected input while frames flow: WARN with the reason.
    _send(spin_until, pub, _image(frame, time.time_ns()), outs)
    pub.publish(Image(height=4, width=4, encoding="32FC1", step=16, data=b"\x00" * 64))
    m = len(arrays)
    assert spin_until(
        lambda: any(
            s.level == DiagnosticStatus.WARN and "rejected" in s.message
            for a in arrays[m:]
            for s in a.status
            if s.hardware_id == "/diag_a/image"
        ),
        timeout_sec=5.0,
    )


def test_lifecycle_outputs_only_while_active(
    rclpy_context, executor, make_node, spin_until, model64
):
    """configure -> activate -> deactivate -> activate -> cleanup through the lifecycle services."""
    from lifecycle_msgs.msg import Transition

    node = RVMNode(
        runtime=RVMRuntime(model64, device="cpu"),
        context=rclpy_context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("image_topics", value=["/lc/image"]),
            Parameter("tracks.grid", value=[2, 2]),
            Parameter("stats_period_sec", value=0.0),
            Parameter("qos_overrides./lc/image.subscription.reliability", value="reliable"),
        ],
    )
    executor.add_node(node)
    try:
        client = make_node("rvm_test_client")
        outs = Outputs(client, "/lc/image")
        pub = client.create_publisher(Image, "/lc/image", QOS)
        frame = np.full((64, 64, 3), 50, np.uint8)
        stamp = [1_700_000_000 * 10**9]

        def publish_and_wait(expect_output: bool) -> None:
            n = len(outs.features)
            stamp[0] += 50_000_000
            pub.publish(_image(frame, stamp[0]))
            got = spin_until(
                lambda: len(outs.features) > n, timeout_sec=3.0 if not expect_output else 15.0
            )
            assert got == expect_output, f"output while {node.state}: {got}"

        name = node.get_name()
        assert get_state(client, spin_until, name) == "unconfigured"
        assert node.runtime is None and not node.cameras
        assert pub.get_subscription_count() == 0
        assert change_state(client, spin_until, name, Transition.TRANSITION_CONFIGURE)
        assert get_state(client, spin_until, name) == "inactive" and node.runtime is not None
        assert pub.get_subscription_count() == 0  # inactive: not subscribed
        assert change_state(client, spin_until, name, Transition.TRANSITION_ACTIVATE)
        _connect(
            spin_until, pub, lambda: node.cameras[0].pub_features.get_subscription_count() >= 1
        )
        publish_and_wait(True)
        publish_and_wait(True)
        assert outs.features[-1].frame_index == 1
        assert change_state(client, spin_until, name, Transition.TRANSITION_DEACTIVATE)
        assert spin_until(lambda: pub.get_subscription_count() == 0, timeout_sec=10.0)
        publish_and_wait(False)
        runtime = node.runtime
        assert change_state(client, spin_until, name, Transition.TRANSITION_ACTIVATE)
        assert node.runtime is runtime  # configuration kept across deactivate
        _connect(spin_until, pub, lambda: True)
        publish_and_wait(True)
        assert outs.features[-1].frame_index == 2  # the camera state was kept too
        assert change_state(client, spin_until, name, Transition.TRANSITION_DEACTIVATE)
        assert change_state(client, spin_until, name, Transition.TRANSITION_CLEANUP)
        assert get_state(client, spin_until, name) == "unconfigured"
        assert node.runtime is None and not node.cameras
        assert spin_until(lambda: client.count_publishers("/lc/image/rvm/features") == 0, 10.0)
        # Shutdown from active releases everything too.
        for t in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert change_state(client, spin_until, name, t)
        publish_and_wait(True)
        assert change_state(client, spin_until, name, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert get_state(client, spin_until, name) == "finalized"
        assert node.runtime is None and not node.cameras and node._worker is None
        assert spin_until(lambda: pub.get_subscription_count() == 0, timeout_sec=10.0)
    finally:
        executor.remove_node(node)
        node.destroy_node()


def test_configure_failure_reported_on_diagnostics(rclpy_context, executor, make_node, spin_until):
    """A bad model fails configure (node stays unconfigured, alive) and shows as ERROR."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from lifecycle_msgs.msg import Transition

    node = RVMNode(
        context=rclpy_context,
        parameter_overrides=[
            Parameter("autostart", value=False),
            Parameter("model_path", value="/nonexistent/model.onnx"),
            Parameter("diagnostics.period_sec", value=0.2),
        ],
    )
    executor.add_node(node)
    try:
        client = make_node("rvm_test_client")
        arrays: list = []
        client.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
        assert not change_state(
            client, spin_until, node.get_name(), Transition.TRANSITION_CONFIGURE
        )
        assert get_state(client, spin_until, node.get_name()) == "unconfigured"

        def error_seen() -> bool:
            return any(
                s.level == DiagnosticStatus.ERROR and "no such file" in s.message
                for a in arrays
                for s in a.status
            )

        assert spin_until(error_seen, timeout_sec=5.0)
    finally:
        executor.remove_node(node)
        node.destroy_node()


def test_input_qos_sensor_data_and_override(rvm_node, make_node, spin_until, model64):
    """Default input: best effort (REP-2003 sensor data); ``qos_overrides`` parameters change it."""
    from rclpy.qos import QoSReliabilityPolicy

    node = rvm_node(model64, ["/qa/image"], qos__reliability="best_effort")
    over = rvm_node(model64, ["/qb/image"], qos__reliability="reliable", qos__depth=4)
    client = make_node("rvm_test_client")

    def sub_qos(topic: str):
        assert spin_until(lambda: len(client.get_subscriptions_info_by_topic(topic)) == 1, 10.0)
        return client.get_subscriptions_info_by_topic(topic)[0].qos_profile

    assert sub_qos("/qa/image").reliability == QoSReliabilityPolicy.BEST_EFFORT
    assert sub_qos("/qb/image").reliability == QoSReliabilityPolicy.RELIABLE
    assert over.get_parameter("qos_overrides./qb/image.subscription.depth").value == 4
    assert node.get_parameter("qos_overrides./qa/image.subscription.depth").value == 1
    assert node.get_parameter("qos_overrides./qa/image.subscription.reliability").value == (
        "best_effort"
    )
    for topic in ("/qa/image/rvm/features", "/qa/image/rvm/tracks", "/qa/image/rvm/masks"):
        assert spin_until(lambda t=topic: len(client.get_publishers_info_by_topic(t)) == 1, 10.0)
        info = client.get_publishers_info_by_topic(topic)[0]
        assert info.qos_profile.reliability == QoSReliabilityPolicy.RELIABLE, topic
    # A best-effort publisher cannot feed a reliable subscription: the override is effective.
    be = client.create_publisher(
        Image, "/qb/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    rel = client.create_publisher(Image, "/qa/image", QOS)  # reliable feeds best effort
    assert spin_until(lambda: rel.get_subscription_count() == 1, timeout_sec=10.0)
    spin_until(lambda: False, timeout_sec=0.5)
    assert be.get_subscription_count() == 0


def _labels_msg(labels: np.ndarray, encoding: str = "mono8") -> Image:
    arr = np.ascontiguousarray(labels, np.uint8 if encoding in ("mono8", "8UC1") else "<u2")
    h, w = arr.shape
    return Image(height=h, width=w, encoding=encoding, step=w * arr.itemsize, data=arr.tobytes())


class _MaskRig(NamedTuple):
    """A node with one camera, a client subscribed to its outputs and its set_mask service."""

    node: RVMNode
    client: object
    outs: Outputs
    masks: list
    pub: object
    srv: object


def _mask_rig(
    rvm_node, make_node, spin_until, model: Path, topic: str, method: str = "dis"
) -> _MaskRig:
    node = rvm_node(model, [topic], tracks__grid=[2, 2], masks__method=method)
    client = make_node("rvm_test_client")
    outs = Outputs(client, topic)
    masks: list = []
    client.create_subscription(Image, f"{topic}/rvm/masks", masks.append, QOS_OUT)
    pub = client.create_publisher(Image, topic, QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_masks.get_subscription_count() >= 1)
    srv = client.create_client(SetMask, f"{topic}/rvm/set_mask")
    assert spin_until(srv.service_is_ready, timeout_sec=10.0)
    return _MaskRig(node, client, outs, masks, pub, srv)


@pytest.mark.parametrize("method", ["dis", "features"])
def test_mask_service_publishes_masks_with_input_header(
    rvm_node, make_node, spin_until, model64, method
):
    node, client, outs, masks, pub, srv = _mask_rig(
        rvm_node, make_node, spin_until, model64, f"/mk_{method}/image", method
    )
    cam = node.cameras[0]
    assert cam.pipeline.masks.method == method

    def call(request):
        fut = srv.call_async(request)
        assert spin_until(fut.done, timeout_sec=10.0)
        return fut.result()

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    t0 = 1_700_000_000 * 10**9
    _send(spin_until, pub, _image(frames[0], t0), outs)
    assert not masks  # no mask set: nothing published
    labels = np.zeros((64, 64), np.uint8)
    labels[8:30, 8:30] = 3
    labels[40:60, 36:60] = 200  # sparse ids are kept
    res = call(SetMask.Request(labels=_labels_msg(labels, "16UC1")))
    assert res.success and res.num_labels == 2, res.message
    for i in range(1, 6):
        msg = _image(frames[i], t0 + i * 50_000_000, frame_id=f"mk_{method}_optical")
        _send(spin_until, pub, msg, outs)
        assert spin_until(lambda i=i: len(masks) == i, timeout_sec=10.0)
        m = masks[-1]
        assert m.header == msg.header
        assert (m.height, m.width, m.encoding, m.step) == (64, 64, "mono8", 64)
        ids = np.frombuffer(bytes(m.data), np.uint8).reshape(64, 64)
        assert set(np.unique(ids).tolist()) <= {0, 3, 200}
        if i == 1:  # the seed frame: the seed itself
            np.testing.assert_array_equal(ids, labels)
    # Boxes and points seed a mask too (over background).
    res = call(
        SetMask.Request(
            box_x0=[2.0],
            box_y0=[2.0],
            box_x1=[20.0],
            box_y1=[20.0],
            box_labels=[1],
            point_x=[50.0],
            point_y=[50.0],
            point_labels=[2],
            point_radius=4.0,
        )
    )
    assert res.success and res.num_labels == 2
    _send(spin_until, pub, _image(frames[0], t0 + 10 * 50_000_000), outs)
    assert spin_until(lambda: len(masks) == 6, timeout_sec=10.0)
    ids = np.frombuffer(bytes(masks[-1].data), np.uint8).reshape(64, 64)
    assert (ids[2:21, 2:21] == 1).all() and ids[50, 50] == 2 and ids[35, 5] == 0
    # A reset clears it: no more masks.
    trig = client.create_client(Trigger, f"/mk_{method}/image/rvm/reset")
    assert spin_until(trig.service_is_ready, timeout_sec=10.0)
    fut = trig.call_async(Trigger.Request())
    assert spin_until(fut.done, timeout_sec=10.0)
    _send(spin_until, pub, _image(frames[1], t0 + 11 * 50_000_000), outs)
    _send(spin_until, pub, _image(frames[2], t0 + 12 * 50_000_000), outs)
    spin_until(lambda: False, timeout_sec=0.3)
    assert len(masks) == 6 and cam.pipeline.masks.num_labels == 0


def _bad_seed(rng: np.random.Generator, i: int) -> SetMask.Request:
    """One malformed SetMask request (the camera is 64x64)."""
    kind = i % 10
    req = SetMask.Request()
    h, w = 64, 64
    if kind == 0:  # wrong size
        h, w = int(rng.integers(1, 200)), int(rng.integers(65, 200))
        req.labels = _labels_msg(rng.integers(0, 3, (h, w)))
    elif kind == 1:  # wrong encoding
        req.labels = _labels_msg(rng.integers(0, 3, (h, w)))
        req.labels.encoding = str(rng.choice(["rgb8", "32FC1", "", "bgr8", "x" * 300, "jpeg"]))
    elif kind == 2:  # empty
        req.labels = Image()
    elif kind == 3:  # truncated data
        req.labels = _labels_msg(rng.integers(0, 3, (h, w)))
        req.labels.data = bytes(req.labels.data)[: int(rng.integers(0, h * w))]
    elif kind == 4:  # step too small / huge claimed size
        req.labels = _labels_msg(rng.integers(0, 3, (h, w)))
        if rng.random() < 0.5:
            req.labels.step = int(rng.integers(0, w))
        else:
            req.labels.height, req.labels.width, req.labels.step = 2**31 - 1, 2**31 - 1, 2**32 - 1
    elif kind == 5:  # ids beyond mono8
        req.labels = _labels_msg(np.full((h, w), 300), "16UC1")
    elif kind == 6:  # all background
        req.labels = _labels_msg(np.zeros((h, w)))
    elif kind == 7:  # non-finite / mismatched points
        req.point_x, req.point_y, req.point_labels = [float("nan")], [3.0], [1]
        if rng.random() < 0.5:
            req.point_x = [1.0, 2.0]
    elif kind == 8:  # boxes with label 0, inf corners, mismatched lengths
        req.box_x0, req.box_y0, req.box_x1, req.box_y1 = [0.0], [0.0], [float("inf")], [9.0]
        req.box_labels = [int(rng.choice([0, 1]))]
        if rng.random() < 0.3:
            req.box_y1 = []
    else:  # negative radius
        req.point_x, req.point_y, req.point_labels, req.point_radius = [1.0], [1.0], [1], -3.0
    return req


def test_fuzz_mask_service_never_kills_the_node(rvm_node, make_node, spin_until, model64):
    node, _, outs, masks, pub, srv = _mask_rig(
        rvm_node, make_node, spin_until, model64, "/mf/image"
    )
    cam = node.cameras[0]
    frame = np.full((64, 64, 3), 120, np.uint8)
    t0 = 1_700_000_000 * 10**9
    _send(spin_until, pub, _image(frame, t0), outs)  # the camera's size is known from here on
    rng = np.random.default_rng(7)
    refused = 0
    for i in range(200):
        fut = srv.call_async(_bad_seed(rng, i))
        assert spin_until(fut.done, timeout_sec=10.0), f"no response to bad seed {i}"
        res = fut.result()
        refused += not res.success
        assert res.success or res.message.startswith("/mf/image: "), res.message
        if i % 20 == 19:  # frames keep being served
            _send(spin_until, pub, _image(frame, t0 + (i + 1) * 10**7), outs)
    assert refused == 200
    # A wrong-size seed queued before the camera's size is known is dropped at the frame.
    cam.pipeline.set_mask(np.ones((10, 10), np.int32))
    _send(spin_until, pub, _image(frame, t0 + 3 * 10**9 // 1000), outs)
    assert cam.pipeline.mask_failures == 1 and not cam.pipeline.masks.active
    # Still alive and serving a valid seed.
    good = np.zeros((64, 64), np.uint8)
    good[10:20, 10:20] = 1
    fut = srv.call_async(SetMask.Request(labels=_labels_msg(good)))
    assert spin_until(fut.done, timeout_sec=10.0) and fut.result().success
    _send(spin_until, pub, _image(frame, t0 + 4 * 10**9 // 1000), outs)
    assert spin_until(lambda: len(masks) == 1, timeout_sec=10.0)
    assert node._worker.is_alive()
    s = cam.pipeline.stats.snapshot()
    assert s.frames_rejected == 0 and s.frames_processed == len(outs.features)


def test_example_mask_client(rvm_node, make_node, spin_until, model64):
    """``python -m rvm_ros.mask_client`` (the documented example) seeds and reads masks."""
    node = rvm_node(model64, ["/mc/image"], tracks__grid=[2, 2])
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/mc/image")
    pub = client.create_publisher(Image, "/mc/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_features.get_subscription_count() >= 1)
    cmd = [sys.executable, "-m", "rvm_ros.mask_client", "/mc/image", "--masks", "2"]
    cmd += ["--box", "4", "4", "30", "30", "1", "--point", "50", "50", "2", "--radius", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frame = np.full((64, 64, 3), 99, np.uint8)
    last = [0]

    def step() -> None:  # frames at ~20 Hz (stamped now) once the client has seeded a mask
        now = time.time_ns()
        if cam.pipeline.masks.active and now - last[0] > 50_000_000:
            last[0] = now
            pub.publish(_image(frame, now))

    assert spin_until(lambda: proc.poll() is not None, timeout_sec=60.0, step=step)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    lines = out.strip().splitlines()
    assert lines[0].startswith("set_mask: success=True labels=2"), lines
    assert len(lines) == 3 and all(" 64x64 pixels per label " in x for x in lines[1:]), lines
    assert "{1: 729, 2: 81}" in lines[1]  # the seed frame: the box (27x27) and the disc
    assert outs.features


def test_ros_side_modules_import_neither_torch_nor_pyav():
    code = (
        "import sys; import rvm_ros.node, rvm_ros.demo, rvm_ros.player, rvm_ros.masks, "
        "rvm_ros.diagnostics, rvm_ros.mask_client, rvm_ros.dds, rvm_ros.launch_local; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'av')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_configure_creates_each_camera_stream_in_the_runtime(rclpy_context, model64):
    """The runtime makes (and first-runs) one stream per resolved camera topic at configure,
    before any frame, so GPU first-run failures fall back there instead of on a frame."""
    node = RVMNode(
        context=rclpy_context,
        namespace="front",
        parameter_overrides=[
            Parameter("model_path", value=str(model64)),
            Parameter("image_topics", value=["image", "/rear/image"]),
        ],
    )
    try:
        assert node.runtime.streams == ["/front/image", "/rear/image"]
        assert [node.runtime.frames(s) for s in node.runtime.streams] == [0, 0]
        assert [c.pipeline.name for c in node.cameras] == node.runtime.streams
    finally:
        node.destroy_node()


@pytest.mark.parametrize(
    "args, says",
    [
        (["-p", "image_topics:=['1 bad']"], "rvm_node: error: "),
        (["-p", "image_topics:=[image, /image]"], "are one camera: /image"),
        (["-p", "device:=gpu"], "bad parameter: device='gpu': choose from auto, cpu, cuda"),
        (["-p", "threads:=5000"], "bad parameter: Parameter threads out of range"),
        (["-p", "max_gap_sec:=1"], "bad parameter: Trying to set parameter 'max_gap_sec'"),
        (["-p", "image_topics:=[cam/image, cam/image/compressed]"], "are one camera: /cam/image"),
        (
            [
                "-p",
                "image_topics:=[/q/image]",
                "-p",
                "qos_overrides./q/image.subscription.reliability:=bogus",
            ],
            "rvm_node: error: activate failed: ",
        ),
    ],
)
def test_bad_start_parameters_exit_with_one_line(model64, args, says):
    """Configure and activate failures of any kind end the node with one line, no traceback."""
    proc = _run_node("-p", f"model_path:={model64}", *args)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if not line.startswith("[INFO]")]
    assert proc.returncode != 0 and "Traceback" not in out
    assert len(errors) == 1 and says in errors[0] and errors[0].startswith("rvm_node: error: "), out


def test_cleanup_closes_the_runtime_it_loaded(rclpy_context, model64):
    """A node that loaded its runtime closes it on cleanup (its run thread ends then, not at
    garbage collection); a failed activate leaves the node inactive and reconfigurable."""
    node = RVMNode(
        context=rclpy_context,
        parameter_overrides=[
            Parameter("model_path", value=str(model64)),
            Parameter("image_topics", value=["/closing/image"]),
        ],
    )
    try:
        runtime = node.runtime
        frame = np.zeros((64, 64, 3), np.uint8)
        runtime.step(frame, "/closing/image")
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.runtime is None
        with pytest.raises(RuntimeError):
            runtime.step(frame, "/closing/image")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.runtime is not runtime
    finally:
        node.destroy_node()


class _Caller(threading.Thread):
    """Calls one service in a loop from its own thread, node and executor until ``stop``."""

    def __init__(
        self, context, srv_type, name: str, make_request, on_response, stop, pause: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.args = context, srv_type, name
        self.make_request, self.on_response, self.stop = make_request, on_response, stop
        self.pause = pause  # seconds between calls
        self.calls = 0
        self.errors: list[str] = []

    def run(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        context, srv_type, name = self.args
        node = rclpy.create_node(f"rvm_caller_{threading.get_ident()}", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=15.0):
                self.errors.append(f"{name}: not available")
                return
            while not self.stop.is_set():
                request = self.make_request()
                future = client.call_async(request)
                executor.spin_until_future_complete(future, timeout_sec=15.0)
                if not future.done():
                    self.errors.append(f"{name}: no response")
                    return
                response = future.result()
                if not response.success:
                    self.errors.append(f"{name}: {response.message}")
                    return
                self.on_response(request, response)
                self.calls += 1
                self.stop.wait(self.pause)
        except Exception as exc:
            self.errors.append(f"{name}: {exc!r}")
        finally:
            executor.remove_node(node)
            node.destroy_node()
            executor.shutdown(timeout_sec=1.0)


def test_concurrent_service_calls_while_frames_stream(
    rvm_node, make_node, spin_until, rclpy_context, model64
):
    # No grid seeding: every track id comes from add_queries, so the test knows them all. Many
    # tracks make each removal long enough to interleave with the worker's frames and resets.
    node = rvm_node(model64, ["/cc/image"], tracks__grid=[0, 0], tracks__max=5000)
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/cc/image")
    pub = client.create_publisher(Image, "/cc/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_tracks.get_subscription_count() >= 1)
    frames = np.random.default_rng(11).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    t0 = 1_700_000_000 * 10**9
    _send(spin_until, pub, _image(frames[0], t0), outs)  # the camera's size is known from here

    lock = threading.Lock()
    added: list[int] = []
    removed: set[int] = set()  # ids whose removal was answered
    rng = np.random.default_rng(12)  # used under ``lock`` (callers share it)

    def queries():
        with lock:
            xy = rng.uniform(0, 63, (int(rng.integers(1, 300)), 2))
        return AddQueries.Request(camera="/cc/image", x=xy[:, 0].tolist(), y=xy[:, 1].tolist())

    def on_added(request, response):
        assert len(response.ids) == len(request.x)
        with lock:
            added.extend(int(i) for i in response.ids)

    def removal():
        with lock:
            live = list(outs.tracks[-1].ids)  # tracked now: their removal touches the tracker
            pick = rng.choice(live, min(len(live), 100), replace=False) if live else []
        return RemoveTracks.Request(ids=[int(i) for i in pick] + [10**9])

    def on_removed(request, response):
        with lock:
            removed.update(request.ids)

    box = SetMask.Request(box_x0=[4.0], box_y0=[4.0], box_x1=[30.0], box_y1=[30.0], box_labels=[1])
    stop = threading.Event()
    ignore = lambda request, response: None  # noqa: E731
    callers = [
        _Caller(rclpy_context, AddQueries, "/rvm_node/add_queries", queries, on_added, stop),
        _Caller(rclpy_context, AddQueries, "/rvm_node/add_queries", queries, on_added, stop),
        _Caller(rclpy_context, RemoveTracks, "/rvm_node/remove_tracks", removal, on_removed, stop),
        # Paced, so tracks live a few frames between resets.
        _Caller(rclpy_context, Reset, "/rvm_node/reset", Reset.Request, ignore, stop, 0.02),
        _Caller(rclpy_context, SetMask, "/cc/image/rvm/set_mask", lambda: box, ignore, stop, 0.01),
    ]

    def stream():  # frames keep coming whatever the worker is doing (its slot drops extras)
        i = 0
        while not stop.is_set():
            i += 1
            pub.publish(_image(frames[i % 4], t0 + i * 5_000_000))
            stop.wait(0.005)

    threads = [*callers, threading.Thread(target=stream, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        spin_until(lambda: len(outs.tracks) > 150 or any(c.errors for c in callers), timeout_sec=60)
    finally:
        stop.set()  # the node's services run on this thread's executor: spin until all answered
        spin_until(lambda: not any(t.is_alive() for t in threads), timeout_sec=30.0)
    assert not any(c.errors for c in callers), [c.errors for c in callers]
    assert all(c.calls > 0 for c in callers), [c.calls for c in callers]
    for i, tracks in enumerate(outs.tracks):
        k = len(tracks.ids)
        lengths = {len(a) for a in (tracks.x, tracks.y, tracks.visible, tracks.visibility)}
        assert lengths | {len(tracks.age)} == {k}, f"tracks {i}: ragged arrays"
        assert len(set(tracks.ids)) == k, f"tracks {i}: duplicate ids"
    published = {int(i) for t in outs.tracks for i in t.ids}
    assert published <= set(added), sorted(published - set(added))
    # The worker never failed and still serves frames; every answered removal holds.
    assert node._worker.is_alive()
    assert not [k for k in node._warned if k[1] in ("error", "tracking", "mask")], node._warned
    final = _image(frames[0], t0 + 10**10)
    pub.publish(final)
    assert spin_until(lambda: outs.tracks[-1].header == final.header, timeout_sec=15.0)
    assert not removed & set(outs.tracks[-1].ids), "a removed track came back"
    assert cam.pipeline.stats.snapshot().frames_rejected == 0


def test_dis_tracks_follow_a_translation(rvm_node, make_node, spin_until, model64):
    """``tracks.method: dis`` runs the optical-flow tracker in the node: a smooth texture
    shifted 2 px right per frame moves the interior tracks by 2 px per frame."""
    import cv2

    node = rvm_node(model64, ["/dis/image"], tracks__method="dis")
    client = make_node("rvm_test_client")
    outs = Outputs(client, "/dis/image")
    pub = client.create_publisher(Image, "/dis/image", QOS)
    cam = node.cameras[0]
    _connect(spin_until, pub, lambda: cam.pub_features.get_subscription_count() >= 1)
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 96, 3)).astype(np.uint8), (0, 0), 1.5)
    t0 = 1_700_000_000 * 10**9
    for i in range(4):
        frame = np.ascontiguousarray(texture[:, 16 - 2 * i : 80 - 2 * i])  # content moves right
        _send(spin_until, pub, _image(frame, t0 + i * 33_000_000), outs)
    first, last = outs.tracks[0], outs.tracks[-1]
    assert list(first.ids) == list(last.ids)
    x0, x1 = np.array(first.x), np.array(last.x)
    inner = (x0 > 12) & (x0 < 52) & (np.array(first.y) > 12) & (np.array(first.y) < 52)
    np.testing.assert_allclose(np.median(x1[inner] - x0[inner]), 6.0, atol=0.5)


def test_model_status_warns_when_the_requested_device_fell_back():
    """cuda/tensorrt requested but running elsewhere: WARN with the reason; auto on the CPU: OK."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from rvm_ros.diagnostics import RuntimeInfo, model_status

    def status(requested: str, device: str, fallback: str) -> DiagnosticStatus:
        info = RuntimeInfo("m", "/m.onnx", "", device, (64, 64), requested, fallback)
        return model_status("rvm_node", "active", info, "")

    s = status("cuda", "cpu", "libcudart.so.12: cannot open shared object file")
    assert s.level == DiagnosticStatus.WARN
    assert s.message == (
        "cuda requested, running on the CPU: libcudart.so.12: cannot open shared object file"
    )
    assert {kv.key: kv.value for kv in s.values}["requested_device"] == "cuda"
    assert status("tensorrt", "cuda", "no TensorRT").message == (
        "tensorrt requested, running on cuda: no TensorRT"
    )
    assert status("auto", "cpu", "no CUDA").level == DiagnosticStatus.OK  # auto: CPU is fine
    assert status("cuda", "cuda", "").level == DiagnosticStatus.OK
    assert status("", "cpu", "no CUDA").level == DiagnosticStatus.OK  # request not known


def test_runtime_info_takes_the_fallback_reasons_from_the_runtime(model64):
    """A real RVMRuntime asked for cuda on a machine where cuda does not work."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from rvm_ros.diagnostics import model_status, runtime_info
    from rvm_ros.runtime import RVMRuntime

    rt = RVMRuntime(model64, device="cuda")
    try:
        if rt.device != "cpu":
            pytest.skip("cuda works here: nothing falls back")
        info = runtime_info(rt, "m", str(model64), (64, 64), requested_device="cuda")
        reason = next(a.reason for a in rt.attempts if a.reason)
        assert rt.attempts[-1].setup == "cpu" and reason in info.fallback
        s = model_status("rvm_node", "active", info, "")
        assert s.level == DiagnosticStatus.WARN
        assert s.message.startswith("cuda requested, running on the CPU: ")
    finally:
        rt.close()


def test_camera_level_names_only_the_rejections_since_the_last_report():
    from diagnostic_msgs.msg import DiagnosticStatus

    from rvm_ros.diagnostics import DiagnosticsConfig, camera_level
    from rvm_ros.stats import StatsSnapshot

    def snap(rejected: dict[str, int]) -> StatsSnapshot:
        return StatsSnapshot(
            frames_in=20,
            frames_processed=10,
            frames_rejected=sum(rejected.values()),
            fps=10.0,
            rejected_by_reason=rejected,
            since_received_s=0.1,
            since_processed_s=0.1,
        )

    config = DiagnosticsConfig()
    prev = snap({"encoding": 3})
    now = snap({"encoding": 3, "too_large": 2})
    assert camera_level(now, prev, True, config) == (
        DiagnosticStatus.WARN,
        "2 frames rejected (too_large)",
    )
    assert camera_level(now, None, True, config)[1] == "5 frames rejected (encoding, too_large)"
    assert camera_level(now, now, True, config) == (DiagnosticStatus.OK, "10.0 fps")


def test_mask_client_reads_palette_and_gray_label_pngs(tmp_path):
    """DAVIS-style palette PNGs give their palette indices; RGB images are refused in one line."""
    import cv2
    from PIL import Image as PILImage

    from rvm_ros.mask_client import read_labels

    ids = np.zeros((6, 8), np.uint8)
    ids[1:3, 2:5], ids[4:, 6:] = 1, 2
    im = PILImage.fromarray(ids, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    im.save(tmp_path / "p.png")
    assert np.array_equal(read_labels(str(tmp_path / "p.png")), ids)
    cv2.imwrite(str(tmp_path / "g.png"), ids)
    assert np.array_equal(read_labels(str(tmp_path / "g.png")), ids)
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="c.png: RGB image, not gray or palette label ids"):
        read_labels(str(tmp_path / "c.png"))


def test_node_reports_its_cuda_fallback(rclpy_context, model64):
    """A node asked for cuda on a machine without it runs on the CPU and its model status
    says so (WARN with the runtime's reason), not OK."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from rvm_ros.diagnostics import model_status

    node = RVMNode(
        context=rclpy_context,
        parameter_overrides=[
            Parameter("model_path", value=str(model64)),
            Parameter("device", value="cuda"),
            Parameter("image_topics", value=["/fallback/image"]),
        ],
    )
    try:
        if node.runtime.device != "cpu":
            pytest.skip("this machine runs the CUDA EP")
        assert node.info.requested_device == "cuda" and node.info.fallback
        s = model_status(node.get_name(), node.state, node.info, node.error)
        assert s.level == DiagnosticStatus.WARN and s.message.startswith("cuda requested")
    finally:
        node.destroy_node()


# -- parameters: declared from rvm_ros.parameters ------------------------------------------------
def _parameter_service(make_node, spin_until, srv_type: Any, name: str, request: Any) -> Any:
    """Call one of rvm_node's parameter services from another node, as ``ros2 param`` does."""
    client = make_node("rvm_param_client").create_client(srv_type, f"/rvm_node/{name}")
    assert spin_until(client.service_is_ready, timeout_sec=10.0)
    future = client.call_async(request)
    assert spin_until(future.done, timeout_sec=10.0)
    return future.result()


def test_declared_descriptors_carry_types_ranges_and_choices(
    rvm_node, make_node, spin_until, model64
):
    """``ros2 param describe`` sees each table entry: type, description, range, choices."""
    from rcl_interfaces.srv import DescribeParameters

    rvm_node(model64, ["/pd/image"])
    names = list(PARAMETERS)
    got = _parameter_service(
        make_node,
        spin_until,
        DescribeParameters,
        "describe_parameters",
        DescribeParameters.Request(names=names),
    ).descriptors
    by_name = {d.name: d for d in got}
    assert set(by_name) == set(names)
    for p in PARAMETERS.values():
        d = by_name[p.name]
        assert d.type == Parameter.Type.from_parameter_value(p.default).value, p.name
        assert d.description == p.description and d.read_only == p.startup_only, p.name
        for choice in p.choices:
            assert choice in d.additional_constraints, p.name
        scalar_range = p.range is not None and not isinstance(p.default, list)
        ranges = [(r.from_value, r.to_value) for r in [*d.integer_range, *d.floating_point_range]]
        assert ranges == ([tuple(p.range)] if scalar_range else []), p.name
    assert "one of: rvm, hybrid, lk, dis" in by_name["tracks.method"].additional_constraints
    assert [(r.from_value, r.to_value) for r in by_name["threads"].integer_range] == [(0, 1024)]
    assert by_name["autostart"].read_only and not by_name["tracks.max"].read_only


def test_bad_parameter_value_is_rejected_with_its_reason(rvm_node, make_node, spin_until, model64):
    """A set through the node's parameter service is refused with a reason and changes nothing."""
    from rcl_interfaces.srv import SetParameters

    node = rvm_node(model64, ["/pr/image"])
    cases = [
        (Parameter("device", value="gpu"), "device='gpu': choose from auto, cpu, cuda, tensorrt"),
        (Parameter("tracks.method", value="best"), "tracks.method='best': choose from rvm"),
        (Parameter("tracks.max", value=-1), "out of range"),
        (Parameter("tracks.grid", value=[-1, 4]), "tracks.grid=[-1, 4] is outside [0, 1024]"),
        (Parameter("max_gap_sec", value="soon"), "Wrong parameter type"),  # rclpy's check
        (Parameter("autostart", value=False), "read-only"),
        (Parameter("tracks.method", value="lk"), ""),  # a good one is taken
    ]
    request = SetParameters.Request(parameters=[p.to_parameter_msg() for p, _ in cases])
    results = _parameter_service(
        make_node, spin_until, SetParameters, "set_parameters", request
    ).results
    for (param, says), result in zip(cases, results):
        assert result.successful == (not says), (param.name, result.reason)
        assert says in result.reason and "\n" not in result.reason, (param.name, result.reason)
    assert node.get_parameter("device").value == "auto"
    assert node.get_parameter("tracks.method").value == "lk"


def test_bad_parameter_override_fails_construction_with_one_line(rclpy_context, model64):
    """A bad value from a params file or ``-p`` stops the node before anything is made."""
    with pytest.raises(
        ValueError, match=r"^bad parameter: feature_dtype='f8': choose from float16"
    ):
        RVMNode(
            context=rclpy_context,
            parameter_overrides=[
                Parameter("model_path", value=str(model64)),
                Parameter("feature_dtype", value="f8"),
            ],
        )
