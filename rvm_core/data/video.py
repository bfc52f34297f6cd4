"""Reading frames from video files, image-sequence folders and .npy arrays.

All readers return RGB uint8 arrays of shape [T, H, W, 3]. Video files are decoded with PyAV.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".ogv", ".m4v"})
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg"})
ARRAY_EXTS = frozenset({".npy"})
# Folders need at least this many images to count as an image sequence (a single still is not
# a video; stereo pairs are explicitly 2 images and are excluded too).
MIN_IMAGES_PER_SEQUENCE = 3

Size = int | tuple[int, int] | None


class VideoReadError(RuntimeError):
    """A video could not be opened or decoded (corrupt, truncated, unsupported)."""


@contextmanager
def _reading(what: str | Callable[[], str]) -> Iterator[None]:
    """Turn any error in the block into VideoReadError("<what>: <type>: <error>").

    PyAV and numpy raise many error types (InvalidDataError, OSError, ValueError, ...); callers
    only need to know the video is unreadable. ``what`` may be a callable so the message can
    report progress made inside the block (e.g. frames decoded so far).
    """
    try:
        yield
    except VideoReadError:
        raise
    except Exception as e:
        prefix = what() if callable(what) else what
        raise VideoReadError(f"{prefix}: {type(e).__name__}: {e}") from e


def _natural_key(name: str) -> list[int | str]:
    # frame_2.png must sort before frame_10.png
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, in natural (frame) order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def is_image_sequence(path: str | Path) -> bool:
    """True if `path` is a folder of >= MIN_IMAGES_PER_SEQUENCE images of one size (frames).

    The size check (first, middle, last image) keeps folders of unrelated stills, e.g. stereo
    pairs with ground truth, from being mistaken for a video.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    files = image_files(path)
    if len(files) < MIN_IMAGES_PER_SEQUENCE:
        return False
    probe = {files[0], files[len(files) // 2], files[-1]}
    sizes = {_image_hw_or_none(f) for f in probe}
    return len(sizes) == 1 and None not in sizes


def _image_hw_or_none(path: Path) -> tuple[int, int] | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else img.shape[:2]


def is_video_like(path: str | Path) -> bool:
    """True if `path` is a readable kind of video: video file, .npy array or image folder."""
    path = Path(path)
    if path.is_dir():
        return is_image_sequence(path)
    return path.suffix.lower() in VIDEO_EXTS | ARRAY_EXTS


def list_videos(paths_or_dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (recursive) and .txt file lists into a sorted, de-duplicated list.

    A .txt file is read as one path per line (blank lines and '#' comments ignored; relative
    paths are relative to the list file). Image-sequence folders count as one video each.
    """
    if isinstance(paths_or_dirs, (str, Path)):
        paths_or_dirs = [paths_or_dirs]
    out: list[Path] = []
    for item in paths_or_dirs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    q = Path(line)
                    out.extend(list_videos(q if q.is_absolute() else p.parent / q))
        elif p.is_dir():
            if is_image_sequence(p):
                out.append(p)
            for sub in sorted(p.rglob("*")):
                if (sub.is_file() and is_video_like(sub)) or is_image_sequence(sub):
                    out.append(sub)
        elif p.exists():
            out.append(p)  # explicit file: let the reader decide (and count it if it fails)
        else:
            raise FileNotFoundError(f"no such video file or folder: {p}")
    seen: set[Path] = set()
    unique = []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return sorted(unique)


def output_hw(h: int, w: int, size: Size) -> tuple[int, int]:
    """Target (H, W): int `size` = short side (aspect kept, no upscaling), tuple = exact (H, W)."""
    if size is None:
        return h, w
    if isinstance(size, int):
        short = min(h, w)
        if short <= size:
            return h, w
        s = size / short
        # round to even so yuv-style consumers and 2x2 patching never see odd sizes
        return max(2, round(h * s / 2) * 2), max(2, round(w * s / 2) * 2)
    return int(size[0]), int(size[1])


def resize_frame(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize one uint8 [H,W,3] frame to `hw` (area filter when shrinking, bilinear otherwise)."""
    if frame.shape[:2] == hw:
        return frame
    shrink = hw[0] < frame.shape[0] or hw[1] < frame.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(frame, (hw[1], hw[0]), interpolation=interp)


def _frame_to_rgb(frame: av.VideoFrame, size: Size) -> np.ndarray:
    h, w = output_hw(frame.height, frame.width, size)
    # libswscale converts and shrinks in one pass, much cheaper than rgb24 + cv2 on 1080p
    arr = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    return np.ascontiguousarray(arr)


def _av() -> Any:
    """PyAV, imported on first decode: image folders and .npy clips never need it."""
    try:
        import av
    except ImportError as exc:
        raise VideoReadError(f"decoding video files needs PyAV (pip install av): {exc}") from exc
    return av


def _open_container(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    with _reading("cannot open"):
        container = _av().open(str(path))
    if not container.streams.video:
        container.close()
        raise VideoReadError("no video stream")
    stream = container.streams.video[0]
    # Not frame threads: with them FFmpeg's H.264 decoder applies stream-level workarounds (for
    # files from old x264 builds) to some frames and not others, differently on every run.
    stream.thread_type = "SLICE"
    return container, stream


def iter_video_frames(
    path: str | Path, size: Size = None, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 [H,W,3] frames of a video file, image folder or .npy, in order.

    Raises VideoReadError on unreadable input, including a decode error midway (truncation).
    """
    path = Path(path)
    if path.is_dir():
        for i, f in enumerate(image_files(path)):
            if max_frames is not None and i >= max_frames:
                return
            img = _read_image(f)
            yield resize_frame(img, output_hw(img.shape[0], img.shape[1], size))
        return
    if path.suffix.lower() in ARRAY_EXTS:
        arr = _load_npy(path)
        n = len(arr) if max_frames is None else min(len(arr), max_frames)
        for i in range(n):
            yield resize_frame(np.asarray(arr[i]), output_hw(*arr.shape[1:3], size))
        return
    container, stream = _open_container(path)
    n = 0
    with closing(container), _reading(lambda: f"decode failed after {n} frames"):
        for frame in container.decode(stream):
            if max_frames is not None and n >= max_frames:
                return
            yield _frame_to_rgb(frame, size)
            n += 1
        _check_complete(container, stream, n)
    if n == 0:
        raise VideoReadError("no decodable frames")


def _check_complete(container: av.container.InputContainer, stream: av.VideoStream, n: int) -> None:
    """Raise if an mp4/mov has far fewer frames than its sample table declares (truncated file).

    A truncated 'faststart' mp4 keeps its index, so the demuxer just hits EOF early instead of
    failing. Only ISO-BMFF is checked: AVI frame counts include dropped (empty) frames. The slack
    tolerates decoders dropping a frame or two (edit lists).
    """
    declared = stream.frames
    if "mp4" in container.format.name and declared > 0 and n < 0.98 * declared - 2:
        raise VideoReadError(f"truncated: {n} of {declared} declared frames")


def read_video(path: str | Path, size: Size = None, max_frames: int | None = None) -> np.ndarray:
    """Read a whole video file / image folder / .npy into RGB uint8 [T,H,W,3].

    size: None keeps the native size, int resizes the short side to `size` (never upscales),
    (H, W) resizes exactly. .npy must hold uint8 [T,H,W,3] and is loaded with allow_pickle=False.
    """
    path = Path(path)
    if path.suffix.lower() in ARRAY_EXTS and size is None:
        arr = _load_npy(path)
        return np.array(arr if max_frames is None else arr[:max_frames])
    frames = list(iter_video_frames(path, size=size, max_frames=max_frames))
    if not frames:
        raise VideoReadError(f"{path}: no frames")
    return np.stack(frames)


def _load_npy(path: Path) -> np.ndarray:
    with _reading("cannot load .npy"):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoReadError(f".npy must be uint8 [T,H,W,3], got {arr.dtype} {arr.shape}")
    return arr


def _read_image_bgr(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VideoReadError(f"cannot read image {path.name}")
    return img


def _read_image(path: Path) -> np.ndarray:
    return cv2.cvtColor(_read_image_bgr(path), cv2.COLOR_BGR2RGB)


def _read_image_hw(path: Path) -> tuple[int, int]:
    img = _read_image_bgr(path)
    return img.shape[0], img.shape[1]


@dataclass
class VideoInfo:
    """Frame count and native size of a video, as seen by `probe_video`."""

    num_frames: int
    height: int
    width: int
    fps: float


def probe_video(path: str | Path) -> VideoInfo:
    """Count frames cheaply (demux only for video files; no pixel decoding)."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise VideoReadError("empty image folder")
        h, w = _read_image_hw(files[0])
        return VideoInfo(len(files), h, w, 0.0)
    if path.suffix.lower() in ARRAY_EXTS:
        arr = _load_npy(path)
        return VideoInfo(arr.shape[0], arr.shape[1], arr.shape[2], 0.0)
    container, stream = _open_container(path)
    with closing(container), _reading("demux failed"):
        n = sum(1 for p in container.demux(stream) if p.size)
        _check_complete(container, stream, n)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        info = VideoInfo(n, stream.codec_context.height, stream.codec_context.width, fps)
    if info.num_frames == 0:
        raise VideoReadError("no video packets")
    return info


def _in_order(got: dict[int, np.ndarray], wanted: list[int], indices: Sequence[int]) -> np.ndarray:
    """Frames `got` stacked in `indices` order; raises if a wanted frame was never decoded."""
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoReadError(f"frames {missing[:4]} not decodable (truncated?)")
    return np.stack([got[i] for i in indices])


class FrameReader:
    """Random access to frames of one video without a cache: dir / .npy / PyAV with seeking.

    For video files, frame i is the i-th frame in presentation order; the packet pts list gathered
    once at open time maps decoded pts back to frame indices exactly (also for VFR streams).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pts: list[int] | None = None
        self._files: list[Path] | None = None
        self._arr: np.ndarray | None = None
        if self.path.is_dir():
            self._files = image_files(self.path)
            self.num_frames = len(self._files)
        elif self.path.suffix.lower() in ARRAY_EXTS:
            self._arr = _load_npy(self.path)
            self.num_frames = len(self._arr)
        else:
            container, stream = _open_container(self.path)
            with closing(container), _reading("demux failed"):
                pts = [p.pts for p in container.demux(stream) if p.size]
                _check_complete(container, stream, len(pts))
            self.num_frames = len(pts)
            # without pts on every packet we cannot seek reliably: decode from the start instead
            self._pts = sorted(pts) if all(p is not None for p in pts) else None
        if self.num_frames == 0:
            raise VideoReadError("no frames")

    def __getstate__(self) -> dict:
        # an np.load memmap would pickle as a full in-memory copy: reload it lazily instead
        state = self.__dict__.copy()
        if state["_arr"] is not None:
            state["_arr"] = None
        return state

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as RGB uint8 [N,H,W,3]."""
        if self._files is not None:
            cache = {i: _read_image(self._files[i]) for i in set(indices)}
            return np.stack([cache[i] for i in indices])
        if self.path.suffix.lower() in ARRAY_EXTS:
            if self._arr is None:
                self._arr = _load_npy(self.path)
            return np.asarray(self._arr[np.asarray(indices)])
        return self._read_video(indices)

    def _read_video(self, indices: Sequence[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        wanted_set = set(wanted)
        got: dict[int, np.ndarray] = {}
        container, stream = _open_container(self.path)
        with closing(container), _reading("decode failed"):
            first = wanted[0]
            seek = self._pts is not None and first > 0
            if seek:
                # Decode frame 0 before seeking: some decoder state arrives only with it. x264's
                # version SEI selects FFmpeg's workarounds for old x264 builds, and a decoder that
                # starts at a later keyframe without it decodes such files differently
                # (imageio's cockatoo.mp4: green frames from frame 76 on).
                next(container.decode(stream), None)
                # seek lands on the keyframe at or before frame `first`; pts tells where we are
                container.seek(self._pts[first], stream=stream, backward=True, any_frame=False)
            idx = -1
            for frame in container.decode(stream):
                if self._pts is not None and frame.pts is not None:
                    idx = bisect.bisect_left(self._pts, frame.pts)
                    if seek and ((idx > first and not got) or frame.is_corrupt):
                        # overshot (seek imprecise for this container), or the decoder cannot
                        # start at this keyframe: decode from the top instead
                        return self._read_sequential(wanted, indices)
                else:
                    idx += 1
                if idx in wanted_set:
                    got[idx] = _frame_to_rgb(frame, None)
                if idx >= wanted[-1]:
                    break
        return _in_order(got, wanted, indices)

    def _read_sequential(self, wanted: list[int], indices: Sequence[int]) -> np.ndarray:
        got: dict[int, np.ndarray] = {}
        for i, frame in enumerate(iter_video_frames(self.path, max_frames=wanted[-1] + 1)):
            if i in wanted:
                got[i] = frame
        return _in_order(got, wanted, indices)
