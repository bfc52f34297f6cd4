"""rvm-ros make-bag / rvm-ros bag-eval on a real video: rosbag2 (mcap and sqlite3) in and out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader

from rvm_core.data.video import read_video
from rvm_ros.bag_eval import bag_eval, typestore
from rvm_ros.cli import main as rvm
from rvm_ros.messages import features_from_msg
from rvm_ros.msg import FeatureMap, PointTracks
from rvm_ros.runtime import RVMRuntime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rvm_test_models import tiny_onnx  # noqa: E402

VIDEO = Path(__file__).resolve().parent.parent / "rvm_ros" / "data" / "demo.mp4"  # bundled, CC0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_bag_then_bag_eval(tmp_path, capsys, storage):
    n = 8
    bag, out = tmp_path / "cam", tmp_path / "out"
    args = ["make-bag", str(VIDEO), str(bag), "--max-frames", str(n), "--storage", storage]
    assert rvm(args + ["--encoding", "bgr8"]) == 0
    frames = read_video(VIDEO, max_frames=n)  # [n,360,640,3]

    # Ground truth sidecar: two points that stay put (the test checks plumbing, not accuracy).
    tracks = np.tile(np.array([[100.0, 80.0], [200.0, 150.0]])[:, None], (1, n, 1))
    np.savez(f"{bag}.tracks.npz", tracks=tracks, occluded=np.zeros((2, n), bool))
    model = tiny_onnx((64, 64))
    assert rvm(["bag-eval", str(bag), "--checkpoint", str(model), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"bag-eval: {n} frames, 0 rejected") and "TAP-Vid AJ" in line

    reference = RVMRuntime(model, device="cpu")
    import cv2

    with AnyReader([out], default_typestore=typestore()) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == {
            "/camera/image_raw/rvm/features": "rvm_ros/msg/FeatureMap",
            "/camera/image_raw/rvm/tracks": "rvm_ros/msg/PointTracks",
        }
        feats, trs = [], []
        for conn, _, raw in reader.messages():
            typ = FeatureMap if conn.msgtype.endswith("FeatureMap") else PointTracks
            (feats if typ is FeatureMap else trs).append(deserialize_message(raw, typ))
    assert len(feats) == len(trs) == n
    for i, fm in enumerate(feats):
        small = cv2.resize(frames[i], (64, 64), interpolation=cv2.INTER_AREA)
        want = reference.step(small, "ref")
        np.testing.assert_allclose(features_from_msg(fm).astype(np.float32), want, atol=1e-3)
        assert fm.frame_index == i and (fm.image_width, fm.image_height) == (640, 360)
        assert fm.header.frame_id == "camera"
        assert (fm.stride_x, fm.stride_y) == (80.0, 45.0)
    assert trs[0].header.stamp == feats[0].header.stamp


def test_bag_eval_summary_without_gt(tmp_path):
    bag = tmp_path / "cam"
    assert rvm(["make-bag", str(VIDEO), str(bag), "--max-frames", "3"]) == 0
    s = bag_eval(bag, tiny_onnx((64, 64)))
    assert s["frames"] == 3 and "average_jaccard" not in s
