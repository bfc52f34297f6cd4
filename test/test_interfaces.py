"""The rvm_ros interfaces are real ROS 2 types that round-trip through rclpy (Fast DDS)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from catkin_pkg.package import parse_package
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from rvm_ros.msg import FeatureMap, NodeStats, PointTracks
from rvm_ros.srv import AddQueries, RemoveTracks, Reset

REPO = Path(__file__).resolve().parent.parent
QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def _header(frame_id: str = "cam0_optical") -> Header:
    return Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id=frame_id)


def _roundtrip(make_node, spin_until, msg_type, topic: str, msg):
    """Publish ``msg`` from one node until a second node receives it; return the received copy."""
    pub_node = make_node("rvm_test_pub")
    sub_node = make_node("rvm_test_sub")
    received = []
    sub_node.create_subscription(msg_type, topic, received.append, QOS)
    pub = pub_node.create_publisher(msg_type, topic, QOS)
    assert spin_until(lambda: bool(received), timeout_sec=15.0, step=lambda: pub.publish(msg)), (
        f"no {msg_type.__name__} received on {topic}"
    )
    return received[0]


def test_interface_fields_match_spec():
    assert FeatureMap.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "channels": "uint32",
        "height": "uint32",
        "width": "uint32",
        "stride_x": "float",
        "stride_y": "float",
        "offset_x": "float",
        "offset_y": "float",
        "image_width": "uint32",
        "image_height": "uint32",
        "dtype": "uint8",
        "frame_index": "uint64",
        "sequence_id": "uint32",
        "model_id": "string",
        "data": "sequence<uint8>",
    }
    assert (FeatureMap.DTYPE_FLOAT32, FeatureMap.DTYPE_FLOAT16) == (0, 1)
    assert PointTracks.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "frame_index": "uint64",
        "sequence_id": "uint32",
        "ids": "sequence<uint32>",
        "x": "sequence<float>",
        "y": "sequence<float>",
        "visible": "sequence<boolean>",
        "visibility": "sequence<float>",
        "age": "sequence<uint32>",
    }
    assert set(NodeStats.get_fields_and_field_types()) >= {
        "camera",
        "frames_in",
        "frames_processed",
        "frames_dropped",
        "frames_rejected",
        "latency_p50_ms",
        "latency_p95_ms",
        "fps",
    }
    assert AddQueries.Request.get_fields_and_field_types() == {
        "camera": "string",
        "x": "sequence<float>",
        "y": "sequence<float>",
    }
    assert AddQueries.Response.get_fields_and_field_types() == {
        "success": "boolean",
        "message": "string",
        "ids": "sequence<uint32>",
    }
    assert RemoveTracks.Request.get_fields_and_field_types()["ids"] == "sequence<uint32>"
    assert RemoveTracks.Response.get_fields_and_field_types() == {
        "success": "boolean",
        "message": "string",
        "removed": "uint32",
    }
    assert Reset.Request.get_fields_and_field_types() == {"camera": "string"}


def test_ros_domain_is_isolated(ros_domain_id, rclpy_context):
    assert os.environ["ROS_DOMAIN_ID"] == str(ros_domain_id)
    assert rclpy_context.get_domain_id() == ros_domain_id


def test_feature_map_roundtrip(make_node, spin_until):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((8, 6, 10)).astype("<f2")  # [C, H, W] float16 little-endian
    msg = FeatureMap(
        header=_header(),
        channels=8,
        height=6,
        width=10,
        stride_x=16.0,
        stride_y=16.0,
        offset_x=7.5,
        offset_y=7.5,
        image_width=160,
        image_height=96,
        dtype=FeatureMap.DTYPE_FLOAT16,
        frame_index=2**40 + 3,
        sequence_id=4_000_000_000,
        model_id="rvm-vit-s16@test",
        data=feats.tobytes(),
    )
    got = _roundtrip(make_node, spin_until, FeatureMap, "rvm_test/features", msg)

    assert got.header == msg.header
    assert (got.channels, got.height, got.width) == (8, 6, 10)
    assert (got.stride_x, got.stride_y, got.offset_x, got.offset_y) == (16.0, 16.0, 7.5, 7.5)
    assert (got.image_width, got.image_height) == (160, 96)
    assert got.dtype == FeatureMap.DTYPE_FLOAT16
    assert got.frame_index == 2**40 + 3
    assert got.sequence_id == 4_000_000_000
    assert got.model_id == "rvm-vit-s16@test"
    decoded = np.frombuffer(bytes(got.data), dtype="<f2").reshape(
        got.channels, got.height, got.width
    )
    np.testing.assert_array_equal(decoded, feats)


def test_point_tracks_roundtrip(make_node, spin_until):
    msg = PointTracks(
        header=_header(),
        frame_index=17,
        sequence_id=3,
        ids=[5, 6, 9],
        x=[10.5, 20.25, 639.0],
        y=[0.0, 100.5, 479.75],
        visible=[True, False, True],
        visibility=[0.9, 0.1, 0.75],
        age=[0, 4, 17],
    )
    got = _roundtrip(make_node, spin_until, PointTracks, "rvm_test/tracks", msg)

    assert got.header == msg.header
    assert (got.frame_index, got.sequence_id) == (17, 3)
    assert list(got.ids) == [5, 6, 9]
    np.testing.assert_array_equal(np.asarray(got.x), np.float32([10.5, 20.25, 639.0]))
    np.testing.assert_array_equal(np.asarray(got.y), np.float32([0.0, 100.5, 479.75]))
    assert list(got.visible) == [True, False, True]
    np.testing.assert_allclose(np.asarray(got.visibility), [0.9, 0.1, 0.75], rtol=1e-6)
    assert list(got.age) == [0, 4, 17]


def test_point_tracks_accept_numpy_arrays():
    n = 1000
    msg = PointTracks(
        ids=np.arange(n, dtype=np.uint32),
        x=np.zeros(n, np.float32),
        y=np.ones(n, np.float32),
        visibility=np.full(n, 0.5, np.float32),
        age=np.zeros(n, np.uint32),
        visible=[True] * n,
    )
    assert len(msg.ids) == len(msg.x) == len(msg.visible) == n


def test_node_stats_roundtrip(make_node, spin_until):
    msg = NodeStats(
        header=_header(""),
        camera="/cam0/image_raw",
        frames_in=100,
        frames_processed=90,
        frames_dropped=8,
        frames_rejected=2,
        latency_p50_ms=12.5,
        latency_p95_ms=30.0,
        fps=14.5,
    )
    got = _roundtrip(make_node, spin_until, NodeStats, "rvm_test/stats", msg)
    assert got == msg


def test_image_roundtrip(make_node, spin_until):
    height, width = 48, 64
    img = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    msg = Image(
        header=_header(),
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=width * 3,
        data=img.tobytes(),
    )
    got = _roundtrip(make_node, spin_until, Image, "rvm_test/image_raw", msg)
    assert got.header == msg.header
    assert (got.height, got.width, got.encoding, got.step) == (height, width, "rgb8", width * 3)
    decoded = np.frombuffer(bytes(got.data), np.uint8).reshape(height, got.step)
    np.testing.assert_array_equal(decoded.reshape(height, width, 3), img)


def _call(client, request, spin_until):
    assert spin_until(lambda: client.service_is_ready(), timeout_sec=15.0), (
        f"service {client.srv_name} not available"
    )
    future = client.call_async(request)
    assert spin_until(future.done, timeout_sec=15.0), f"no response from {client.srv_name}"
    return future.result()


def test_services_roundtrip(make_node, spin_until):
    server = make_node("rvm_test_server")
    client_node = make_node("rvm_test_client")
    tracks: dict[int, tuple[float, float]] = {}
    next_id = [100]

    def add_queries(request, response):
        if request.camera != "cam0" or len(request.x) != len(request.y):
            response.success = False
            response.message = "bad request"
            return response
        ids = []
        for x, y in zip(request.x, request.y):
            tracks[next_id[0]] = (x, y)
            ids.append(next_id[0])
            next_id[0] += 1
        response.success = True
        response.ids = ids
        return response

    def remove_tracks(request, response):
        removed = [i for i in request.ids if tracks.pop(i, None) is not None]
        response.success = True
        response.removed = len(removed)
        response.message = f"removed {len(removed)}"
        return response

    def reset(request, response):
        tracks.clear()
        response.success = True
        response.sequence_id = 7
        return response

    def trigger(request, response):
        response.success = True
        response.message = "reset"
        return response

    server.create_service(AddQueries, "rvm_test/add_queries", add_queries)
    server.create_service(RemoveTracks, "rvm_test/remove_tracks", remove_tracks)
    server.create_service(Reset, "rvm_test/reset", reset)
    server.create_service(Trigger, "rvm_test/cam0/reset", trigger)

    add = client_node.create_client(AddQueries, "rvm_test/add_queries")
    res = _call(
        add, AddQueries.Request(camera="cam0", x=[1.0, 2.0, 3.0], y=[4.0, 5.0, 6.0]), spin_until
    )
    assert res.success
    assert list(res.ids) == [100, 101, 102]
    assert tracks[101] == (2.0, 5.0)

    bad = _call(add, AddQueries.Request(camera="cam0", x=[1.0], y=[]), spin_until)
    assert not bad.success and bad.message == "bad request" and list(bad.ids) == []

    remove = client_node.create_client(RemoveTracks, "rvm_test/remove_tracks")
    res = _call(remove, RemoveTracks.Request(ids=[100, 102, 999]), spin_until)
    assert res.success and res.removed == 2
    assert list(tracks) == [101]

    res = _call(client_node.create_client(Reset, "rvm_test/reset"), Reset.Request(), spin_until)
    assert res.success and res.sequence_id == 7 and not tracks

    trig = client_node.create_client(Trigger, "rvm_test/cam0/reset")
    res = _call(trig, Trigger.Request(), spin_until)
    assert res.success and res.message == "reset"


def test_package_xml_is_valid():
    pkg = parse_package(str(REPO / "package.xml"))
    pkg.validate()
    assert pkg.name == "rvm_ros"
    assert pkg.get_build_type() == "ament_cmake"
    assert [lic for lic in pkg.licenses] == ["Apache-2.0"]
    interface_files = sorted(p.name for p in (REPO / "msg").glob("*.msg"))
    interface_files += sorted(p.name for p in (REPO / "srv").glob("*.srv"))
    cmake = (REPO / "CMakeLists.txt").read_text()
    for name in interface_files:
        assert f'"{name.split(".")[1]}/{name}"' in cmake, f"{name} not in CMakeLists.txt"
