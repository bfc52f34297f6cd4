"""Tests of rvm_core.data on small real files written with PyAV / OpenCV / numpy (no mocks)."""

from __future__ import annotations

import logging
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from rvm_core.data import (
    ClipSamplingConfig,
    CropConfig,
    VideoClipDataset,
    build_cache,
    build_loader,
    list_videos,
    measure_loader,
    read_video,
    sample_clip_indices,
    split_heldout,
)
from rvm_core.data.video import FrameReader, VideoReadError
from rvm_core.data.watchdog import process_alive

H, W = 64, 96  # fixture frame size


def pattern_frames(n: int, h: int = H, w: int = W, moving: bool = False) -> np.ndarray:
    """uint8 [n,h,w,3]: R = x ramp, G = y ramp (same in every frame), B = 3 * frame index.

    R/G identical across frames lets a test check that one crop box was used for all frames;
    B identifies the frame (constant per frame, so it survives any crop/resize exactly).
    moving=True adds a white 6 px block at a distinct place per frame (<= 160 frames), which
    survives lossy coding (a B shift of 3 does not).
    """
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[..., 0] = x.astype(np.uint8)
    frames[..., 1] = y.astype(np.uint8)
    frames[..., 2] = (3 * np.arange(n) % 256).astype(np.uint8)[:, None, None]
    if moving:
        for i in range(n):
            y0, x0 = (i // 16) * 6, (i % 16) * 6
            frames[i, y0 : y0 + 6, x0 : x0 + 6] = 255
    return frames


def nearest_frames(decoded: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """Index of the closest original for each (lossy) decoded frame."""
    d = decoded[:, None].astype(np.float32) - originals[None].astype(np.float32)
    return np.abs(d).mean((2, 3, 4)).argmin(1)


def write_video(path: Path, frames: np.ndarray, codec: str = "mpeg4", faststart: bool = False):
    """Encode RGB frames [T,H,W,3] with PyAV (GOP 12 so seeking is exercised)."""
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.bit_rate = 4_000_000  # high quality: the default mpeg4 rate blurs frames together
        s.options = {"g": "12"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 2 good mp4s, an avi, an image folder, a .npy, a short clip and 3 bad files."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "a.mp4", pattern_frames(80, moving=True))
    write_video(d / "b.mp4", pattern_frames(130, moving=True), codec="libx264")
    write_video(d / "c.avi", pattern_frames(70, moving=True))
    write_video(
        d / "short.mp4", pattern_frames(20, moving=True)
    )  # < num_source + gap_max: gaps shrink
    write_video(
        d / "tiny.mp4", pattern_frames(3, moving=True)
    )  # < num_source + 1: skipped as too short
    np.save(d / "arr.npy", pattern_frames(66))
    (d / "seq").mkdir()
    for i, f in enumerate(pattern_frames(40)):
        cv2.imwrite(str(d / "seq" / f"frame_{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(0)
    (d / "corrupt.mp4").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for name, faststart in (("trunc.mp4", False), ("trunc_fs.mp4", True)):
        write_video(d / f"full_{name}", pattern_frames(80, moving=True), faststart=faststart)
        data = (d / f"full_{name}").read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
        (d / f"full_{name}").unlink()
    return d


GOOD = {"a.mp4", "b.mp4", "c.avi", "short.mp4", "arr.npy", "seq"}
BAD = {"corrupt.mp4", "trunc.mp4", "trunc_fs.mp4"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def make_ds(video_dir: Path, cache_dir: Path | None, **kw) -> VideoClipDataset:
    kw.setdefault("crop", CropConfig(size=32))
    return VideoClipDataset(video_dir, ClipSamplingConfig(), cache_dir=cache_dir, **kw)


# --- reading -----------------------------------------------------------------------------------


def test_list_and_read_video(video_dir: Path) -> None:
    names = {p.name for p in list_videos(video_dir)}
    assert names == GOOD | BAD | {"tiny.mp4"}
    v = read_video(video_dir / "a.mp4")
    assert v.dtype == np.uint8 and v.shape == (80, H, W, 3)
    assert np.array_equal(
        nearest_frames(v, pattern_frames(80, moving=True)), np.arange(80)
    )  # order kept
    assert read_video(video_dir / "seq").shape == (40, H, W, 3)
    assert np.array_equal(read_video(video_dir / "seq"), pattern_frames(40))  # png: lossless
    assert np.array_equal(read_video(video_dir / "arr.npy", max_frames=5), pattern_frames(5))
    assert read_video(video_dir / "a.mp4", size=32, max_frames=7).shape == (7, 32, 48, 3)
    assert read_video(video_dir / "arr.npy", size=(20, 30)).shape == (66, 20, 30, 3)
    for bad in BAD:
        with pytest.raises(VideoReadError):
            read_video(video_dir / bad)


def test_frame_reader_seeking_matches_sequential(video_dir: Path) -> None:
    full = read_video(video_dir / "b.mp4")
    reader = FrameReader(video_dir / "b.mp4")
    assert reader.num_frames == 130
    idx = [100, 3, 57, 57, 129, 12]
    assert np.array_equal(reader.read(idx), full[idx])


def _old_x264_444_video(path: Path) -> None:
    """An H.264 4:4:4 file whose first frame claims an old x264 build (its version SEI), as in
    imageio's cockatoo.mp4: FFmpeg decodes it with workarounds it only knows from frame 0."""
    tmp = path.with_suffix(".tmp.mp4")
    frames = (pattern_frames(45, moving=True).astype(np.int16) * 3 % 256).astype(np.uint8)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"x264-params": "keyint=15:bframes=2", "crf": "10"}
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with av.open(str(tmp)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for i, pk in enumerate(p for p in src.demux(src.streams.video[0]) if p.size):
            if i == 0:
                data = re.sub(rb"x264 - core \d+", b"x264 - core 130", bytes(pk))
                old = pk
                pk = av.Packet(data)
                pk.pts, pk.dts, pk.time_base, pk.is_keyframe = old.pts, old.dts, old.time_base, True
            pk.stream = out
            dst.mux(pk)
    tmp.unlink()


def test_frame_reader_seeks_in_files_that_need_the_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "old_x264.mp4"
    _old_x264_444_video(path)
    full = read_video(path)
    for _ in range(3):  # H.264 frame threads applied the workarounds to a varying set of frames
        assert np.array_equal(read_video(path), full)
    # the fixture exercises the problem: a decoder started at the keyframe of frame 30 alone
    # decodes differently from one that read the stream from the start
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        c.seek(FrameReader(path)._pts[33], stream=s, backward=True, any_frame=False)
        cold = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(s))])
    assert not np.array_equal(cold, full[30:36])
    idx = [33, 40, 31, 44]
    assert np.array_equal(FrameReader(path).read(idx), full[idx])


# --- sampling ----------------------------------------------------------------------------------


def test_sampler_invariants() -> None:
    cfg = ClipSamplingConfig()
    rng = np.random.default_rng(0)
    gaps_seen = set()
    for window_len in (64, 60, 52, 30, 10, 5):
        for _ in range(300):
            src, tgt = sample_clip_indices(rng, 100, window_len, cfg)
            assert src.dtype == tgt.dtype == np.int64
            assert np.array_equal(src, src[0] + np.arange(cfg.num_source))  # contiguous
            assert src[0] >= 100 and tgt.max() < 100 + window_len  # in range
            gaps = tgt - src[-1]
            g_hi = min(cfg.gap_max, window_len - cfg.num_source)
            assert gaps.min() >= min(cfg.gap_min, g_hi) and gaps.max() <= g_hi
            if window_len >= cfg.num_source + cfg.gap_max:
                assert gaps.min() >= cfg.gap_min and gaps.max() <= cfg.gap_max
            deltas = tgt - src[0]
            assert deltas.max() < 64 and deltas.max() <= cfg.max_delta
            if window_len == 64:
                gaps_seen.update(gaps.tolist())
    assert gaps_seen == set(range(cfg.gap_min, cfg.gap_max + 1))  # whole range reachable
    with pytest.raises(ValueError):
        ClipSamplingConfig(clip_len=32, gap_max=48)


def test_dataset_samples_and_crop_consistency(video_dir: Path, cache_dir: Path) -> None:
    ds = make_ds(video_dir, cache_dir, crop=CropConfig(size=(24, 40), scale=(0.1, 1.0)))
    assert {Path(v.source).name for v in ds.videos} == GOOD
    npy_id = next(i for i, v in enumerate(ds.videos) if v.source.endswith("arr.npy"))
    flips = set()
    for n in range(3 * len(ds)):
        s = ds[n]
        assert s["source"].shape == (4, 3, 24, 40) and s["source"].dtype == torch.uint8
        assert s["target"].shape == (4, 3, 24, 40) and s["target"].dtype == torch.uint8
        assert s["deltas"].dtype == torch.int64 and s["deltas"].shape == (4,)
        assert torch.equal(s["deltas"], s["target_frames"] - s["source_frames"][0])
        assert 0 < int(s["deltas"].min()) and int(s["deltas"].max()) <= 51
        v = ds.videos[s["video_id"]]
        assert int(s["target_frames"].max()) < v.num_frames
        if s["video_id"] == npy_id:  # lossless source: exact checks
            frames = torch.cat([s["source"], s["target"]])
            # the same crop + flip on every frame: identical R (x ramp) and G (y ramp) planes
            assert (frames[:, :2] == frames[:1, :2]).all()
            # B plane says which frame it is
            want = 3 * torch.cat([s["source_frames"], s["target_frames"]])
            assert torch.equal(frames[:, 2].float().mean((1, 2)), want.float())
            flips.add(bool(frames[0, 0, 0, 0] > frames[0, 0, 0, -1]))  # R ramp reversed?
    assert flips == {True, False}


def test_corrupt_and_truncated_skipped(video_dir: Path, cache_dir: Path, caplog) -> None:
    for cdir in (cache_dir, None):
        with caplog.at_level(logging.WARNING):
            ds = make_ds(video_dir, cdir)
        assert {Path(p).name for p in ds.skipped} == BAD | {"tiny.mp4"}
        assert ds.num_skipped == 4
        for bad in BAD:  # each bad file logged once
            assert sum(bad in r.getMessage() for r in caplog.records) == 1
        caplog.clear()


def test_all_bad_fails_with_one_clear_error(video_dir: Path, tmp_path: Path) -> None:
    paths = [video_dir / b for b in sorted(BAD)]
    for cdir in (tmp_path / "c", None):
        with pytest.raises(RuntimeError, match="no usable videos: all 3 files"):
            VideoClipDataset(paths, cache_dir=cdir)


def test_direct_decoding_matches_cache_geometry(video_dir: Path, cache_dir: Path) -> None:
    cached, direct = make_ds(video_dir, cache_dir), make_ds(video_dir, None)
    assert len(cached) == len(direct)
    for n in range(10):
        a, b = cached[n], direct[n]
        assert torch.equal(a["target_frames"], b["target_frames"])
        assert a["video_id"] == b["video_id"] and a["source"].shape == b["source"].shape
        # same frames and same crop (cache short side 160 > 64 px: no downscale, so equal)
        assert torch.equal(a["source"], b["source"])


# --- determinism, resume, sharding -------------------------------------------------------------


def test_determinism_and_epochs(video_dir: Path, cache_dir: Path) -> None:
    ds1, ds2 = make_ds(video_dir, cache_dir, seed=7), make_ds(video_dir, cache_dir, seed=7)
    other = make_ds(video_dir, cache_dir, seed=8)
    for n in (0, 5, len(ds1) + 3):
        assert torch.equal(ds1[n]["source"], ds2[n]["source"])
        assert torch.equal(ds1[n]["target_frames"], ds2[n]["target_frames"])
    order = lambda d, e: [d.locate(e * len(d) + i)[2] for i in range(len(d))]  # noqa: E731
    assert sorted(order(ds1, 0)) == list(range(len(ds1.items)))  # epoch = each window once
    assert order(ds1, 0) != order(ds1, 1) and order(ds1, 0) != order(other, 0)


def test_loader_resume_identical(video_dir: Path, cache_dir: Path) -> None:
    ds = make_ds(video_dir, cache_dir, seed=3)
    full = build_loader(ds, batch_size=4, num_workers=0)
    ref = [b for _, b in zip(range(6), full)]
    part = build_loader(ds, batch_size=4, num_workers=0)
    for _ in zip(range(2), part):
        pass
    state = part.state_dict()
    assert state["next_index"] == 8
    resumed = build_loader(make_ds(video_dir, cache_dir, seed=3), batch_size=4, num_workers=0)
    resumed.load_state_dict(state)
    rest = [b for _, b in zip(range(4), resumed)]
    for a, b in zip(ref[2:], rest):
        assert torch.equal(a["sample_index"], b["sample_index"])
        assert torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])
    with pytest.raises(ValueError):
        resumed.load_state_dict({**state, "seed": 4})


def test_rank_sharding_disjoint(video_dir: Path, cache_dir: Path) -> None:
    world = 3
    shards = [make_ds(video_dir, cache_dir, rank=r, world_size=world) for r in range(world)]
    for epoch in range(2):
        seen = [
            {d.locate(epoch * len(d) + i)[2] for i in range(len(d))} for d in shards
        ]  # item ids
        assert all(len(s) == len(shards[0]) for s in seen)
        assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
        assert sum(map(len, seen)) == len(shards[0].items) // world * world


def test_dataloader_two_workers(video_dir: Path, cache_dir: Path) -> None:
    ds = make_ds(video_dir, cache_dir)
    loader = build_loader(ds, batch_size=4, num_workers=2, num_samples=len(ds) // 4 * 4)
    batches = list(loader)
    assert len(batches) == len(ds) // 4
    b = batches[0]
    assert b["source"].shape == (4, 4, 3, 32, 32) and b["deltas"].shape == (4, 4)
    idx = torch.cat([b["sample_index"] for b in batches])
    assert torch.equal(idx, torch.arange(len(idx)))  # in order, despite 2 workers
    again = list(loader)  # second pass continues = next epoch
    assert int(again[0]["sample_index"][0]) == len(idx)
    assert torch.equal(again[0]["source"][0], ds[len(idx)]["source"])
    stats = measure_loader(build_loader(ds, batch_size=4, num_workers=2), num_batches=5, warmup=1)
    assert stats["samples_per_s"] > 0


def test_cache_build_in_worker_processes(video_dir: Path, tmp_path: Path) -> None:
    """Decoding into the cache with a process pool gives the same index as in-process."""
    one = build_cache(video_dir, tmp_path / "one")
    pool = build_cache(video_dir, tmp_path / "pool", num_workers=2)
    assert [(v.source, v.num_frames) for v in pool.videos] == [
        (v.source, v.num_frames) for v in one.videos
    ]
    assert sorted(pool.skipped) == sorted(one.skipped) and one.videos


def test_workers_exit_when_the_trainer_is_killed(video_dir: Path, cache_dir: Path) -> None:
    """A SIGKILLed training process leaves no loader workers behind: they are forkserver
    children, which PyTorch's parent-pid watchdog does not cover (they used to live on)."""
    code = (
        "import time\n"
        "from rvm_core.data import ClipSamplingConfig, CropConfig, VideoClipDataset, build_loader\n"
        f"ds = VideoClipDataset({str(video_dir)!r}, ClipSamplingConfig(), "
        f"cache_dir={str(cache_dir)!r}, crop=CropConfig(size=32))\n"
        "loader = build_loader(ds, batch_size=4, num_workers=2)\n"
        "next(iter(loader))\n"
        "print(*[w.pid for w in loader._iterator._workers], flush=True)\n"
        "time.sleep(300)\n"
    )
    workers = _kill_after_first_line(code)
    assert len(workers) == 2
    _assert_all_exit(workers, "the trainer")


def test_fork_child_exits_with_its_killed_parent() -> None:
    """The cache-build pool's case: a fork child blocked on a queue only the dead parent could
    close ends within seconds of the parent's SIGKILL, via ``exit_with`` as its initializer."""
    code = (
        "import multiprocessing as mp, os, time\n"
        "from rvm_core.data.watchdog import exit_with\n"
        "def child(q, parent):\n"
        "    exit_with(parent)\n"
        "    q.get()\n"
        "if __name__ == '__main__':\n"
        "    q = mp.get_context('fork').Queue()\n"
        "    p = mp.get_context('fork').Process(target=child, args=(q, os.getpid()))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )
    (pid,) = _kill_after_first_line(code)
    _assert_all_exit([pid], "its parent")


def _kill_after_first_line(code: str, timeout: float = 120.0) -> list[int]:
    """Run ``code`` in a new Python, read the pids it prints on its first line, SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready, f"no output within {timeout:.0f} s"
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert pids and all(map(process_alive, pids))
    finally:
        proc.kill()
        proc.wait()
    return pids


def _assert_all_exit(pids: list[int], owner: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(map(process_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(process_alive, pids)), f"processes {pids} outlived {owner}"


def test_direct_decoding_in_workers(video_dir: Path) -> None:
    ds = make_ds(video_dir, None)
    batches = [b for _, b in zip(range(3), build_loader(ds, batch_size=4, num_workers=2))]
    assert batches[-1]["target"].shape == (4, 4, 3, 32, 32)


def test_split_heldout(video_dir: Path) -> None:
    train, held = split_heldout(video_dir, ["a.mp4", "seq"])
    assert [p.name for p in held] == ["a.mp4", "seq"]
    assert not {p.name for p in train} & {"a.mp4", "seq"}
    train2, held2 = split_heldout(video_dir, r"^(a\.mp4|seq)$")
    assert (train2, held2) == (train, held)
