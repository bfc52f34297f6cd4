"""Pre-decoding cache: each video is decoded once into a uint8 .npy memmap [T,H,W,3].

Random access into compressed mp4 needs a seek + decode of a whole GOP per sample, far too slow
for 2 CPU cores. The cache stores frames at a reduced short side so a sample is a few memcpy's.

Layout of `cache_dir`:
  <stem>-<key>.npy        frames, RGB uint8 [T,H,W,3], opened with np.load(mmap_mode="r")
  <stem>-<key>.json       entry metadata (source path, frame count, size, fps)
  <stem>-<key>.bad.json   the source failed to decode (reason), so it is not retried every run
  index.json              summary of the last build (for humans/tools; not needed for lookup)
`key` hashes (absolute source path, byte size, mtime, short_side, max_frames): a changed source
gets a fresh entry. Every file is written to a temp name then renamed, so concurrent builders
(e.g. several DDP ranks) can only duplicate work, never corrupt the cache. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rvm_core.data.video import (
    VideoReadError,
    image_files,
    iter_video_frames,
    list_videos,
    resize_frame,
)
from rvm_core.data.watchdog import exit_with

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_HEADER_LEN = 128  # fixed .npy v1.0 header size, rewritten in place once T is known


@dataclass
class CachedVideo:
    """One decoded video in the cache; `file` is the .npy path of frames [T,H,W,3] uint8."""

    source: str
    file: str
    num_frames: int
    height: int
    width: int
    fps: float


@dataclass
class CacheIndex:
    """Result of `build_cache`: usable videos plus skipped sources (path -> reason)."""

    cache_dir: str
    short_side: int
    videos: list[CachedVideo] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    body = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}".encode()
    pad = _HEADER_LEN - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} too long for the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _HEADER_LEN - 10) + body + b" " * pad + b"\n"


def _source_key(path: Path, short_side: int, max_frames: int | None) -> str:
    st = path.stat()
    size = len(image_files(path)) if path.is_dir() else st.st_size
    raw = f"{path.resolve()}|{size}|{st.st_mtime_ns}|{short_side}|{max_frames}|v{CACHE_VERSION}"
    return f"{path.stem[:40]}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _fps_of(path: Path) -> float:
    if path.is_dir() or path.suffix.lower() == ".npy":
        return 0.0
    import av  # local: only needed for the metadata field

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return float(s.average_rate or s.guessed_rate or 0.0)
    except (av.error.FFmpegError, OSError, IndexError):
        return 0.0


def cache_video(
    path: str | Path,
    cache_dir: str | Path,
    short_side: int = 160,
    max_frames: int | None = None,
) -> CachedVideo:
    """Decode `path` once into the cache (no-op if present); raises VideoReadError if bad."""
    path, cache_dir = Path(path), Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _source_key(path, short_side, max_frames)
    meta_file, bad_file = cache_dir / f"{key}.json", cache_dir / f"{key}.bad.json"
    if meta_file.exists():
        return CachedVideo(**json.loads(meta_file.read_text()))
    if bad_file.exists():
        raise VideoReadError(json.loads(bad_file.read_text())["reason"])
    npy = cache_dir / f"{key}.npy"
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    n, hw = 0, None
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * _HEADER_LEN)
            for frame in iter_video_frames(path, size=short_side, max_frames=max_frames):
                if hw is None:
                    hw = frame.shape[:2]
                # mid-stream resolution changes exist in the wild: keep one shape per video
                f.write(np.ascontiguousarray(resize_frame(frame, hw)).tobytes())
                n += 1
            if hw is None:
                raise VideoReadError("no decodable frames")
            f.seek(0)
            f.write(_npy_header((n, hw[0], hw[1], 3)))
        os.replace(tmp, npy)
    except VideoReadError as e:
        tmp.unlink(missing_ok=True)
        _write_json(bad_file, {"source": str(path), "reason": str(e)})
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    entry = CachedVideo(str(path), str(npy), n, int(hw[0]), int(hw[1]), _fps_of(path))
    _write_json(meta_file, asdict(entry))
    return entry


def _cache_one(
    args: tuple[Path, Path, int, int | None],
) -> tuple[str, CachedVideo | str]:
    path, cache_dir, short_side, max_frames = args
    try:
        return str(path), cache_video(path, cache_dir, short_side, max_frames)
    except (VideoReadError, OSError) as e:
        return str(path), str(e)


def build_cache(
    paths_or_dirs: str | Path | Iterable[str | Path],
    cache_dir: str | Path,
    short_side: int = 160,
    max_frames: int | None = None,
    num_workers: int = 0,
) -> CacheIndex:
    """Decode every video once into `cache_dir`; bad files are skipped, logged once and counted.

    Raises RuntimeError (one line) only if no file at all could be read.
    """
    paths = list_videos(paths_or_dirs)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = CacheIndex(str(cache_dir), short_side)
    jobs = [(p, cache_dir, short_side, max_frames) for p in paths]
    t0 = time.perf_counter()
    if num_workers > 1 and len(jobs) > 1:
        # The workers end with this process even if it is killed mid-build (they would block
        # on the job queue forever otherwise).
        with ProcessPoolExecutor(num_workers, initializer=exit_with, initargs=(os.getpid(),)) as ex:
            results = list(ex.map(_cache_one, jobs))
    else:
        results = [_cache_one(j) for j in jobs]
    for src, res in results:
        if isinstance(res, CachedVideo):
            index.videos.append(res)
        else:
            index.skipped[src] = res
            log.warning("skipping unreadable video %s: %s", src, res)
    log.info(
        "video cache %s: %d videos, %d frames, %d skipped (%.1fs)",
        cache_dir,
        len(index.videos),
        sum(v.num_frames for v in index.videos),
        len(index.skipped),
        time.perf_counter() - t0,
    )
    _write_json(cache_dir / "index.json", {"version": CACHE_VERSION, **asdict(index)})
    if paths and not index.videos:
        raise RuntimeError(
            f"no usable videos: all {len(paths)} files failed to decode "
            f"(e.g. {next(iter(index.skipped.items()))[0]}: {next(iter(index.skipped.values()))})"
        )
    if not paths:
        raise RuntimeError(f"no videos found in {paths_or_dirs}")
    return index


def open_cached(entry: CachedVideo | str | Path) -> np.ndarray:
    """Read-only memmap uint8 [T,H,W,3] of a cached video."""
    file = entry.file if isinstance(entry, CachedVideo) else entry
    return np.load(file, mmap_mode="r", allow_pickle=False)
