"""Semi-supervised label propagation on dense features (numpy + OpenCV only, no torch).

The DAVIS / VIP / JHMDB protocol with the RVM paper's defaults (except ``center``, see
``PropagationConfig``): L2-normalised features; context = first frame + the last 20 frames;
affinity = cosine / 0.7; top-k 7 then softmax; spatial radius 20 patches; one-hot labels
bilinearly downsampled to the grid; the predicted soft labels of each frame enter the context
queue (as DINO's ``eval_video_segmentation.py``); predictions are bilinearly upsampled, then
argmax. Constant cost per frame: (1 + context) x N cells per query.

``upsample="guided"`` leaves the feature grid with image-guided upsampling instead (a guided
filter with the camera frame as guide, ``guided.py``), so boundaries follow the image; it needs
the frame passed as ``guide`` to ``step`` / ``upsample``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from .guided import guided_upsample
from .tracker import normalize_features


@dataclass(frozen=True)
class PropagationConfig:
    """Label propagation settings (RVM defaults: DAVIS top-k 7, VIP top-k 10)."""

    context: int = 20  # previous frames kept besides the first frame
    temperature: float = 0.7  # affinity = cosine / temperature
    topk: int = 7
    radius: float = 20.0  # grid cells; context cells farther than this are ignored
    use_first: bool = True
    # Subtract each frame's mean feature before normalising (not in the paper's protocol: set
    # False to reproduce it). Weakly trained recurrent states share a large common component
    # that makes every cosine ~1, so the nearest neighbours carry no information.
    center: bool = True
    label_downsample: str = "bilinear"  # or "area" / "nearest"
    upsample: str = "bilinear"  # or "nearest", or "guided" (needs the camera frame as guide)
    guide_radius: int = 16  # guided filter window half-size, camera pixels
    guide_eps: float = 1e-3  # guided filter regulariser (intensities in [0, 1])

    def __post_init__(self) -> None:
        if self.upsample not in ("bilinear", "nearest", "guided"):
            raise ValueError(f"upsample must be bilinear, nearest or guided, not {self.upsample!r}")


_INTERP = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


def _resize_channels(x: np.ndarray, hw: tuple[int, int], mode: str) -> np.ndarray:
    """Resize a [H,W,L] float map to hw (cv2 bilinear = torch bilinear, align_corners=False)."""
    out = np.empty((hw[0], hw[1], x.shape[-1]), np.float32)
    for c0 in range(0, x.shape[-1], 4):  # cv2.resize handles at most 4 channels at a time
        out[..., c0 : c0 + 4] = cv2.resize(
            np.ascontiguousarray(x[..., c0 : c0 + 4]), (hw[1], hw[0]), interpolation=_INTERP[mode]
        ).reshape(hw[0], hw[1], -1)
    return out


def one_hot(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Label ids [H,W] (0 = background) -> float32 one-hot [H,W,L]."""
    return (labels[..., None] == np.arange(num_labels)).astype(np.float32)


class LabelPropagator:
    """Streaming propagation: ``start(features, labels)`` on frame 0, then ``step(features)``."""

    def __init__(self, config: PropagationConfig | None = None) -> None:
        self.config = config or PropagationConfig()
        self._first: tuple[np.ndarray, np.ndarray] | None = None
        self._queue: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.config.context)
        self._mask: np.ndarray | None = None

    def start(
        self, features: np.ndarray, labels: np.ndarray, num_labels: int | None = None
    ) -> None:
        """Frame 0: features [h,w,C], label ids [H,W] int (0 = background, 1..L-1 objects)."""
        labels = np.asarray(labels)
        self.image_hw = labels.shape[:2]
        self.num_labels = int(num_labels or labels.max() + 1)
        f = normalize_features(features, self.config.center)
        self.grid_hw = f.shape[:2]
        soft = _resize_channels(
            one_hot(labels, self.num_labels), self.grid_hw, self.config.label_downsample
        )
        self._first = (f.reshape(-1, f.shape[-1]), soft.reshape(-1, self.num_labels))
        self._queue.clear()
        h, w = self.grid_hw
        yy, xx = np.divmod(np.arange(h * w), w)
        d2 = (yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2
        mask = d2 > self.config.radius**2  # [N_query, N_context_frame] cells to ignore
        # On small grids the radius covers everything: skip the masking cost.
        self._mask = mask if mask.any() else None

    def step(self, features: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
        """Next frame's features [h,w,C] -> label ids [H,W] int64 (also queued as context).

        ``guide``: that frame's camera image uint8 [H,W,3], used by ``upsample="guided"``.
        """
        soft = self.step_soft(features)
        return self.upsample(soft, guide).argmax(-1)

    def step_soft(self, features: np.ndarray) -> np.ndarray:
        """Next frame's features -> soft labels on the grid [h,w,L] (queued as context)."""
        if self._first is None:
            raise RuntimeError("call start() with the first frame and its labels first")
        cfg = self.config
        f = normalize_features(features, cfg.center)
        if f.shape[:2] != self.grid_hw:
            raise ValueError(f"feature grid {f.shape[:2]} differs from the first {self.grid_hw}")
        q = f.reshape(-1, f.shape[-1])
        ctx = ([self._first] if cfg.use_first else []) + list(self._queue)
        if not ctx:  # use_first=False on frame 1: only the first frame exists
            ctx = [self._first]
        feats = np.concatenate([c[0] for c in ctx])  # [M*N, C]
        labs = np.concatenate([c[1] for c in ctx])  # [M*N, L]
        aff = (q @ feats.T) / cfg.temperature  # [N, M*N]
        if self._mask is not None:
            aff = np.where(self._mask[:, None, :], -np.inf, aff.reshape(len(q), len(ctx), -1))
            aff = aff.reshape(len(q), -1)
        k = min(cfg.topk, aff.shape[1])
        idx = np.argpartition(-aff, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(aff, idx, axis=1)
        top = np.exp(top - top.max(axis=1, keepdims=True))
        top /= top.sum(axis=1, keepdims=True)
        soft = np.einsum("nk,nkl->nl", top, labs[idx]).astype(np.float32)
        self._queue.append((q, soft))
        return soft.reshape(*self.grid_hw, -1)

    def upsample(self, soft: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
        """Grid soft labels [h,w,L] -> image-size soft labels [H,W,L] (guide: camera frame)."""
        cfg = self.config
        if cfg.upsample != "guided":
            return _resize_channels(soft, self.image_hw, cfg.upsample)
        if guide is None:
            raise ValueError('upsample="guided" needs the camera frame: pass guide=')
        if tuple(np.shape(guide)[:2]) != tuple(self.image_hw):
            raise ValueError(f"guide {np.shape(guide)[:2]} differs from labels {self.image_hw}")
        return guided_upsample(soft, guide, cfg.guide_radius, cfg.guide_eps)


def propagate_labels(
    features: Iterable[np.ndarray],
    first_labels: np.ndarray,
    config: PropagationConfig | None = None,
    num_labels: int | None = None,
    guides: Iterable[np.ndarray] | None = None,
) -> np.ndarray:
    """Offline: per-frame features [h,w,C] (frame 0 first), first labels [H,W] -> ids [T,H,W].

    ``guides``: the camera frames uint8 [H,W,3] (frame 0 first), for ``upsample="guided"``.
    """
    prop = LabelPropagator(config)
    out = [np.asarray(first_labels).astype(np.int64)]
    it = iter(features)
    git = iter(guides) if guides is not None else None
    prop.start(next(it), first_labels, num_labels)
    if git is not None:
        next(git, None)  # frame 0's labels are given
    for f in it:
        out.append(prop.step(f, next(git) if git is not None else None))
    return np.stack(out)
