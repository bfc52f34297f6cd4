"""Clip dataset and DataLoader: deterministic, resumable, rank-sharded source/target samples.

`dataset[n]` is this rank's n-th sample (n counts across epochs) and is a pure function of
(seed, rank, world_size, n): the window order comes from a seeded per-epoch permutation and all
per-sample randomness (source offset, gaps, crop, flip) from an RNG seeded by (seed, epoch,
global position). Resuming = starting the sampler at the number of samples already consumed.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from rvm_core.data.cache import build_cache, open_cached
from rvm_core.data.sampler import (
    ClipSampler,
    ClipSamplingConfig,
    num_windows,
    sample_clip_indices,
    shard_position,
)
from rvm_core.data.transforms import CropConfig, apply_crop, sample_crop
from rvm_core.data.video import FrameReader, VideoReadError, list_videos
from rvm_core.data.watchdog import exit_with

log = logging.getLogger(__name__)

# In direct-decode mode a window can turn out undecodable only when read (truncated file);
# we then deterministically fall back to other windows instead of crashing a worker.
_MAX_FALLBACKS = 16
_logged_failures: set[str] = set()  # per process: log each bad file once


@dataclass
class VideoEntry:
    """A usable video: source path, frame count and either a cache file or a direct reader."""

    source: str
    num_frames: int
    cache_file: str | None = None
    reader: FrameReader | None = None


class VideoClipDataset(torch.utils.data.Dataset):
    """Samples {source uint8 [Ts,3,H,W], target uint8 [Tt,3,H,W], deltas int64 [Tt], ...}.

    With `cache_dir`, videos are decoded once to memmaps at `short_side` px (fast, recommended);
    without, frames are decoded with PyAV (seek + decode) inside the DataLoader workers.
    Unreadable / too-short videos are skipped and listed in `self.skipped` (path -> reason).
    """

    def __init__(
        self,
        paths_or_dirs: str | Path | Iterable[str | Path],
        cfg: ClipSamplingConfig | None = None,
        crop: CropConfig | None = None,
        cache_dir: str | Path | None = None,
        short_side: int = 160,
        max_frames_per_video: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        cache_workers: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg = cfg or ClipSamplingConfig()
        self.crop = crop or CropConfig()
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.skipped: dict[str, str] = {}
        self.videos: list[VideoEntry] = []
        paths = list_videos(paths_or_dirs)
        if not paths:
            raise RuntimeError(f"no videos found in {paths_or_dirs}")
        if cache_dir is not None:
            index = build_cache(
                paths,
                cache_dir,
                short_side,
                max_frames_per_video,
                num_workers=cache_workers,
            )
            self.skipped.update(index.skipped)
            candidates = [
                VideoEntry(v.source, v.num_frames, cache_file=v.file) for v in index.videos
            ]
        else:
            candidates = []
            for p in paths:
                try:
                    r = FrameReader(p)
                except VideoReadError as e:
                    self.skipped[str(p)] = str(e)
                    log.warning("skipping unreadable video %s: %s", p, e)
                    continue
                n = (
                    r.num_frames
                    if max_frames_per_video is None
                    else min(r.num_frames, max_frames_per_video)
                )
                candidates.append(VideoEntry(str(p), n, reader=r))
        for v in candidates:
            if num_windows(v.num_frames, self.cfg) == 0:
                reason = f"too short ({v.num_frames} frames < {self.cfg.min_frames})"
                self.skipped[v.source] = reason
                log.info("skipping %s: %s", v.source, reason)
            else:
                self.videos.append(v)
        if not self.videos:
            first = next(iter(self.skipped.items()), ("?", "?"))
            raise RuntimeError(
                f"no usable videos: all {len(paths)} files were skipped "
                f"(e.g. {first[0]}: {first[1]})"
            )
        # items = clip windows: (video id, window start frame, window number within the video)
        items = [
            (vid, k * self.cfg.stride, k)
            for vid, v in enumerate(self.videos)
            for k in range(num_windows(v.num_frames, self.cfg))
        ]
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 3)
        if len(self.items) < self.world_size:
            raise RuntimeError(f"{len(self.items)} clip windows < world_size {self.world_size}")
        self._memmaps: dict[int, np.ndarray] = {}

    @property
    def num_skipped(self) -> int:
        """Number of skipped (unreadable or too short) inputs."""
        return len(self.skipped)

    @property
    def num_frames(self) -> int:
        """Total usable frames over all videos."""
        return sum(v.num_frames for v in self.videos)

    def __len__(self) -> int:
        """Samples per rank per epoch (indices beyond this continue into later epochs)."""
        return len(self.items) // self.world_size

    def __getstate__(self) -> dict[str, Any]:
        # memmaps would be pickled as full arrays: reopen them lazily in each worker instead
        state = self.__dict__.copy()
        state["_memmaps"] = {}
        return state

    def locate(self, n: int) -> tuple[int, int, int]:
        """(epoch, global position in the epoch order, item id) of this rank's n-th sample."""
        return shard_position(n, len(self.items), self.seed, self.rank, self.world_size)

    def _frames(self, vid: int, indices: np.ndarray) -> np.ndarray:
        v = self.videos[vid]
        if v.cache_file is not None:
            mm = self._memmaps.get(vid)
            if mm is None:
                mm = self._memmaps[vid] = open_cached(v.cache_file)
            # fancy indexing on a memmap copies just these frames
            return mm[indices]
        uniq, inv = np.unique(indices, return_inverse=True)
        return v.reader.read(uniq.tolist())[inv]

    def sample_item(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one sample from clip window `item` using `rng` (raises VideoReadError)."""
        vid, start, clip = (int(x) for x in self.items[item])
        window_len = min(self.cfg.clip_len, self.videos[vid].num_frames - start)
        src, tgt = sample_clip_indices(rng, start, window_len, self.cfg)
        frames = self._frames(vid, np.concatenate([src, tgt]))
        params = sample_crop(rng, frames.shape[1], frames.shape[2], self.crop)
        hwc = apply_crop(frames, params, self.crop.hw)
        # numpy transposes uint8 ~30x faster than torch's permute().contiguous(); the one copy
        # also materializes the (lazy, negative-stride) flip
        out = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))  # [N,3,H,W]
        ns = self.cfg.num_source
        return {
            "source": out[:ns],
            "target": out[ns:],
            "deltas": torch.from_numpy(tgt - src[0]),
            "video_id": vid,
            "clip_index": clip,
            "source_frames": torch.from_numpy(src),
            "target_frames": torch.from_numpy(tgt),
        }

    def __getitem__(self, n: int) -> dict[str, Any]:
        """This rank's n-th sample (n >= 0; n >= len(self) continues into later epochs)."""
        epoch, pos, item = self.locate(n)
        num_items = len(self.items)
        for attempt in range(_MAX_FALLBACKS):
            rng = np.random.default_rng([self.seed, epoch, pos, attempt])
            try:
                sample = self.sample_item(item, rng)
            except VideoReadError as e:
                src = self.videos[int(self.items[item, 0])].source
                if src not in _logged_failures:
                    _logged_failures.add(src)
                    log.warning("undecodable frames in %s (using another clip): %s", src, e)
                # deterministic fallback: a pseudo-random other window of the same epoch
                item = int(rng.integers(num_items))
                continue
            sample.update(sample_index=n, epoch=epoch)
            return sample
        raise RuntimeError(f"sample {n}: {_MAX_FALLBACKS} clip windows in a row failed to decode")


def _worker_init(_: int, trainer_pid: int) -> None:
    # 2-core machines: one thread per worker, otherwise cv2/torch threads oversubscribe the CPU
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    # Workers are children of the forkserver, not of the trainer, and every forkserver child
    # keeps the server alive. So when the trainer is killed (SIGKILL, OOM killer, preemption),
    # PyTorch's worker watchdog (it compares the parent pid) never fires, and the workers and
    # their shared-memory batches would outlive it for good.
    exit_with(trainer_pid)


class ClipLoader(torch.utils.data.DataLoader):
    """DataLoader that remembers how many samples it has handed out, for exact resumption.

    Each new iteration continues where the previous one stopped (so with num_samples=len(ds)
    two loops over the loader are two different epochs). `state_dict()` counts only batches
    actually yielded to the caller, not the ones prefetched by workers.
    """

    def __iter__(self) -> Iterator[Any]:
        sampler: ClipSampler = self.sampler
        sampler.start_index = self.next_index
        for batch in super().__iter__():
            self.next_index += self.batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Data position: the next sample number of this rank, plus the sharding identity."""
        ds: VideoClipDataset = self.dataset
        return {
            "next_index": self.next_index,
            "seed": ds.seed,
            "rank": ds.rank,
            "world_size": ds.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at `state['next_index']`; seed and world_size must match the dataset."""
        ds: VideoClipDataset = self.dataset
        if state["seed"] != ds.seed or state["world_size"] != ds.world_size:
            raise ValueError(
                f"data state for seed={state['seed']} world_size={state['world_size']} does not "
                f"match dataset seed={ds.seed} world_size={ds.world_size}"
            )
        self.next_index = int(state["next_index"])


def build_loader(
    dataset: VideoClipDataset,
    batch_size: int,
    num_workers: int = 2,
    start_index: int = 0,
    num_samples: int | None = None,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
) -> ClipLoader:
    """Deterministic loader over `dataset` from sample `start_index` (None = infinite)."""
    sampler = ClipSampler(start_index, num_samples)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=prefetch_factor,
            persistent_workers=True,
            worker_init_fn=functools.partial(_worker_init, trainer_pid=os.getpid()),
            # Forking a process that already runs other threads (CUDA, NCCL, a ROS executor,
            # DDS) can copy held locks into the workers and hang them; forkserver starts each
            # worker from a clean single-threaded server instead.
            multiprocessing_context="forkserver",
        )
    loader = ClipLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,  # fixed batch shapes; a resumed run stays batch-aligned
        pin_memory=pin_memory,
        **kwargs,
    )
    loader.next_index = int(start_index)
    return loader
