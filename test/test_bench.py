"""The benchmark suites (``benchmarks/``) run end to end on tiny settings (benchmarks are not
tests: no benchmark's timing is asserted, only that each suite runs and writes its table and
plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _args(suite: str, *argv: str) -> argparse.Namespace:
    """Parse ``python -m benchmarks <suite> argv`` with the real parser."""
    from benchmarks.__main__ import build_parser

    return build_parser().parse_args([suite, *argv])


def test_suites_registered() -> None:
    from benchmarks import SUITES

    for name in ("streaming", "peers", "aggregator", "mfu", "all", "node", "gpu-check"):
        assert name in SUITES


def test_streaming_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import streaming

    args = _args("streaming", "--quick", "--out", str(tmp_path))
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "PyTorch eager" in out and "ONNX Runtime" in out
    assert (tmp_path / "streaming_default.png").stat().st_size > 0
    # The summary picks the documented windows for a 1000-frame stream.
    assert streaming.windows(1000) == ((10, 100), (900, 1000))


def test_peers_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    args = _args("peers", "--quick", "--sizes", "default", "--out", str(tmp_path))
    assert args.run(args) == 0
    out = capsys.readouterr().out
    for model in ("RVM native", "DINOv2", "VideoMAE", "V-JEPA 2"):
        assert model in out
    assert (tmp_path / "peers.png").is_file()


def test_peer_flops_match_token_counts() -> None:
    from benchmarks.peers import vit_flops

    # A 16-frame window with tubelet 2 has 8x the tokens of one frame: >= 8x the FLOPs.
    frame = vit_flops(256, 3 * 16 * 16, 384, 12, 1536, cls=True)
    window = vit_flops(8 * 256, 3 * 2 * 16 * 16, 384, 12, 1536, cls=False)
    assert window / frame > 8


def test_aggregator_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("aggregator", "--quick", "--windows", "1,4", "--out", str(tmp_path))
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "GRU core" in out and "attention K=4" in out
    assert (tmp_path / "aggregator.png").is_file()


def test_mfu_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("mfu", "--quick", "--out", str(tmp_path))
    assert args.run(args) == 0
    assert "GEMM peak" in capsys.readouterr().out
    assert (tmp_path / "mfu.png").is_file()


def test_all_quick_writes_report(tmp_path: Path) -> None:
    # Peers and node have their own tests (the node suite needs ROS); keep this one short.
    args = _args("all", "--quick", "--out", str(tmp_path), "--skip", "peers,node")
    assert args.run(args) == 0
    report = (tmp_path / "performance.md").read_text()
    assert report.startswith("# Performance")
    for heading in ("## Summary", "## Streaming cost", "## Model FLOPs", "## Recurrent core"):
        assert heading in report
    assert "## ONNX Runtime vs PyTorch eager, one thread" in report and "## Readouts" in report
    assert "ORT / eager step, RVM default-quick" in report and "tracker + propagation" in report
    for png in ("streaming_default.png", "mfu.png", "aggregator.png"):
        assert f"({png})" in report and (tmp_path / png).is_file()


class VirtualClock:
    """A clock that moves only when a step says how long it took (seconds): exact timings."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_side_by_side_compares_an_aged_stream_with_a_fresh_one() -> None:
    """A step whose cost doubles after 100 frames shows up as 2x; ages are lined up exactly."""
    from benchmarks.streaming import side_by_side

    clock = VirtualClock()

    def stepper(seen: list[int]):
        def step(frame: int) -> None:
            seen.append(frame)
            clock.spend(0.002 if len(seen) > 100 else 0.001)

        return step

    aged, fresh = [], []
    late_ms, early_ms = side_by_side(stepper(aged), stepper(fresh), list(range(200)), 200, clock)
    assert len(aged) == 200 and aged[-1] == 199 and fresh == list(range(100))
    assert late_ms == pytest.approx(2.0) and early_ms == pytest.approx(1.0)


def test_tracker_suite_quick() -> None:
    """Every stage of the readout benchmark runs (model step, trackers, propagation, full)."""
    from benchmarks.tracker import bench_tracker

    r = bench_tracker("tiny", (96, 128), tracks=4, frames=2, methods=("rvm", "dis"))
    assert (r["grid_h"], r["grid_w"], r["dim"]) == (16, 16, 128)  # tiny runs at 128x128
    stages = ("model_step", "tracker_rvm", "tracker_dis", "propagation", "propagation_guided")
    for key in (*stages, "propagation_dis", "full_rvm", "full_dis"):
        assert r[key] > 0, key


def test_paired_round_ratio_cancels_load_between_rounds() -> None:
    """Load that doubles every round hits both sides of that round: per-round ratios stay at
    the true 2x while the per-round times themselves grow 8x."""
    from benchmarks.common import paired_ratios, round_medians, timed_rounds

    state = {"load": 1.0, "last": ""}
    clock = VirtualClock()

    def slow() -> None:  # first in every round
        if state["last"] == "fast":
            state["load"] *= 2.0
        state["last"] = "slow"
        clock.spend(0.008 * state["load"])

    def fast() -> None:
        state["last"] = "fast"
        clock.spend(0.004 * state["load"])

    rounds = 4
    fns = {"slow": slow, "fast": fast}
    times = timed_rounds(fns, rounds, frames=3, block_seconds=0.05, clock=clock)
    assert round_medians([1, 2, 3, 10, 20, 30], 2) == [2, 20]
    with pytest.raises(ValueError, match="equal rounds"):
        round_medians([1, 2, 3], 2)
    slow_r, fast_r = round_medians(times["slow"], rounds), round_medians(times["fast"], rounds)
    assert len(slow_r) == len(fast_r) == rounds and slow_r[-1] > 4 * slow_r[0]
    assert all(s / f == pytest.approx(2.0) for s, f in zip(slow_r, fast_r))
    assert paired_ratios(times["slow"], times["fast"], rounds) == [
        s / f for s, f in zip(slow_r, fast_r)
    ]


def test_gemm_peak_needs_no_ros() -> None:
    """The GEMM peak (and so the runtime and mfu suites) runs where rclpy is not installed."""
    import subprocess
    import sys

    code = (
        "import sys; from benchmarks.gemm import gemm_peak; "
        "p = gemm_peak(sizes=(64,), repeats=1, seconds=0.0, threads=1); "
        "sys.exit(1 if 'rclpy' in sys.modules or not p['peak'] > 0 else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_wait_share_counts_threads_present_in_both_reads() -> None:
    """Waiting share between two schedstat reads; a thread that exited in between is ignored."""
    import math

    from benchmarks.common import sched_times, wait_share

    before = {1: (100, 10), 2: (50, 50)}
    after = {1: (190, 20), 3: (5, 500)}  # thread 2 exited, thread 3 is new
    assert wait_share(before, after) == pytest.approx(10 / 100)
    assert math.isnan(wait_share({}, {}))
    now = sched_times()
    assert all(run >= 0 and wait >= 0 for run, wait in now.values())


def test_transport_counts_are_consistent() -> None:
    """``bench_transport`` runs a real node process and player; its counts are consistent (no
    rate is asserted: how many frames arrive is what the benchmark measures)."""
    pytest.importorskip("rclpy")
    from benchmarks.node import default_model
    from benchmarks.transport import bench_transport, format_report

    hw = (120, 160)
    r = bench_transport(default_model(hw), hw, seconds=2.0, rate=15.0, dds="rvm", qos="sensor")
    assert r["published"] > 0 and r["node_received"] >= 0, r
    assert r["processed"] + r["dropped"] + r["rejected"] <= r["node_received"] <= r["published"], r
    assert "published" in format_report(r).splitlines()[1]


def test_bench_size_must_be_hxw() -> None:
    from benchmarks.node import parse_hw

    assert parse_hw("480x640") == (480, 640)
    for bad in ("48x", "x640", "480", "0x640", "480x640x3", "ax640"):
        with pytest.raises(ValueError, match=r"--size must be HxW, e\.g\. 480x640"):
            parse_hw(bad)


def test_transport_fails_at_once_when_the_node_exits(tmp_path) -> None:
    """A node that cannot load its model: the node's own error, and this process's environment
    as it was."""
    pytest.importorskip("rclpy")
    import os

    from benchmarks.transport import bench_transport

    before = dict(os.environ)
    missing = tmp_path / "missing.onnx"
    with pytest.raises(RuntimeError, match=f"rvm_node exited: .*{missing}"):
        bench_transport(missing, (48, 64), seconds=1.0, rate=5.0, dds="default", qos="sensor")
    assert dict(os.environ) == before


def test_bench_runtime_quick(capsys) -> None:
    from benchmarks.__main__ import main

    assert main(["runtime", "--quick", "--sizes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "GEMM fp32 GFLOP/s" in out and "tiny-quick" in out and "ratio" in out


def test_bench_node_quick(tmp_path: Path) -> None:
    """``python -m benchmarks node --quick``, started from another directory (the suite finds
    its own folder), runs end to end and prints its table."""
    pytest.importorskip("rclpy")
    import subprocess

    from benchmarks.common import child_env, module_command

    cmd = module_command("", "node", "--quick", "--size", "240x320")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=170, cwd=tmp_path, env=child_env()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("bare runtime step", "rclpy relay", "node end to end", "overhead:", "sustained:"):
        assert row in proc.stdout, proc.stdout
    assert list(tmp_path.iterdir()) == []  # wrote nothing where it was started


def test_all_writes_nothing_into_docs_by_default() -> None:
    """Without --out the report goes to runs/bench, never over the committed docs/."""
    args = _args("all", "--quick")
    assert Path(args.out) == Path("runs/bench")
