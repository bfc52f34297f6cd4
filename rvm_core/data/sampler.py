"""Temporal clip sampling: which frames form a sample, and the deterministic per-rank order.

A video of T frames is cut into clip windows of `clip_len` frames (stride `clip_stride`). Each
epoch visits every window once, in a seeded random order, sharded across ranks without overlap.
Inside a window a sample is `num_source` contiguous frames followed by `num_target` frames, each
`gap` frames after the LAST source frame, gap ~ U{gap_min..gap_max} (i.i.d., with replacement).

Short videos (T < num_source + gap_max): the gap range is SHRUNK to the largest sub-range of
[gap_min, gap_max] that fits (upper end T - num_source, lower end min(gap_min, upper end)) and gaps
are drawn uniformly from it. We do not clamp: clamping would pile probability on one gap value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class ClipSamplingConfig:
    """Temporal sampling parameters (all in frames)."""

    clip_len: int = 64  # window length; a sample never spans more than this
    num_source: int = 4  # contiguous source frames
    num_target: int = 4  # target frames, each after the last source frame
    gap_min: int = 4  # min target offset after the last source frame
    gap_max: int = 48  # max target offset after the last source frame
    clip_stride: int | None = None  # window stride; None = clip_len (non-overlapping)

    def __post_init__(self) -> None:
        if self.num_source < 1 or self.num_target < 1:
            raise ValueError("num_source and num_target must be >= 1")
        if not 1 <= self.gap_min <= self.gap_max:
            raise ValueError(f"need 1 <= gap_min <= gap_max, got {self.gap_min}, {self.gap_max}")
        if self.num_source + self.gap_max > self.clip_len:
            raise ValueError(
                f"num_source + gap_max = {self.num_source + self.gap_max} > clip_len "
                f"{self.clip_len}: targets would not fit in a clip window"
            )

    @property
    def min_frames(self) -> int:
        """Shortest usable video: the sources plus one later frame."""
        return self.num_source + 1

    @property
    def max_delta(self) -> int:
        """Largest possible delta (target index - first source index)."""
        return self.num_source - 1 + self.gap_max

    @property
    def stride(self) -> int:
        """Window stride in frames."""
        return self.clip_stride or self.clip_len


def num_windows(num_frames: int, cfg: ClipSamplingConfig) -> int:
    """Clip windows in a video of `num_frames` frames (0 if too short to sample at all)."""
    if num_frames < cfg.min_frames:
        return 0
    if num_frames <= cfg.clip_len:
        return 1
    return 1 + (num_frames - cfg.clip_len) // cfg.stride


def sample_clip_indices(
    rng: np.random.Generator,
    window_start: int,
    window_len: int,
    cfg: ClipSamplingConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (source [Ts], target [Tt]) absolute frame indices (int64) inside one window.

    Targets are sorted by gap (the model gets the deltas, so order carries no information).
    """
    if window_len < cfg.min_frames:
        raise ValueError(f"window of {window_len} frames < min_frames {cfg.min_frames}")
    g_hi = min(cfg.gap_max, window_len - cfg.num_source)
    g_lo = min(cfg.gap_min, g_hi)
    # the source start leaves room for the LARGEST allowed gap, so gaps stay i.i.d. uniform
    s = int(rng.integers(0, window_len - cfg.num_source - g_hi + 1))
    gaps = np.sort(rng.integers(g_lo, g_hi + 1, size=cfg.num_target))
    source = window_start + s + np.arange(cfg.num_source, dtype=np.int64)
    target = source[-1] + gaps.astype(np.int64)
    return source, target


@lru_cache(maxsize=4)
def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The global visiting order of all windows in `epoch` (same on every rank)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_items)


def shard_position(
    n: int, num_items: int, seed: int, rank: int, world_size: int
) -> tuple[int, int, int]:
    """Map the n-th sample of `rank` to (epoch, position in epoch order, global item id).

    Each epoch rank r gets positions r, r + W, r + 2W, ... of the permutation, truncated to
    num_items // W per rank so all ranks run the same number of steps (DDP needs that).
    """
    per_rank = num_items // world_size
    if per_rank == 0:
        raise ValueError(f"{num_items} clip windows cannot be sharded over {world_size} ranks")
    epoch, i = divmod(n, per_rank)
    pos = i * world_size + rank
    return epoch, pos, int(epoch_permutation(num_items, seed, epoch)[pos])


class ClipSampler(torch.utils.data.Sampler[int]):
    """Yields this rank's sample numbers start_index, start_index+1, ... (the dataset key).

    The dataset turns a sample number into a sample as a pure function of (seed, rank,
    world_size, n), so resuming only needs `start_index` = number of samples already consumed.
    num_samples=None iterates forever (step-based training).
    """

    def __init__(self, start_index: int = 0, num_samples: int | None = None) -> None:
        self.start_index = int(start_index)
        self.num_samples = num_samples

    def __iter__(self) -> Iterator[int]:
        n = self.start_index
        end = None if self.num_samples is None else self.start_index + self.num_samples
        while end is None or n < end:
            yield n
            n += 1

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("infinite ClipSampler has no length")
        return self.num_samples
