"""Online point tracking on dense feature maps (numpy + OpenCV only: the ROS node imports this).

Coordinates: image pixels (x, y) with pixel centres at integers (OpenCV convention). A feature
map [h, w, C] covers the whole image uniformly: cell (i, j) is centred at pixel
((j + 0.5) * W / w - 0.5, (i + 0.5) * H / h - 0.5).

Readout (``method='rvm'``): each track keeps a unit template vector sampled bilinearly from the
query frame's features. Every frame, cosine similarity to all cells is one matmul ([K,C]x[C,hw],
constant cost); the best cell in a local window around the previous position is refined to
sub-cell precision by maximising the *exact* cosine of the bilinearly interpolated feature vector
(coarse-to-fine to 1/32 cell) - not a soft-argmax, whose pull towards the window centre made the
naive matcher of ``cpu-training-notes.md`` stay in place. The template is fixed (optionally slowly
updated), so errors do not accumulate frame to frame. Visibility: match score above an absolute
threshold and above a fraction of the track's usual score. Occluded tracks search the whole map
every frame and are re-acquired when the global peak is strong enough (re-detection).

``method='hybrid'``: pyramidal LK (forward-backward checked) moves the point with pixel
precision; features veto or correct it (jump to a feature mode when it beats the similarity at the
LK position by ``jump_margin``), decide visibility and re-detect. ``method='lk'``: LK only.
``method='dis'``: OpenCV DIS dense flow chained frame to frame, forward-backward checked (``dis``).
``method='trained'``: the trained readout (``trained``: features for coarse matching and
re-detection, the gray image for the fine path, one recurrent state row per track) in ONNX
Runtime; ``readout`` names its .onnx file ("default": the one trained for the shipped model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .dis import DISConfig, DISFlow, dis_step
from .lk import LKConfig, lk_step, to_gray

METHODS = ("rvm", "hybrid", "lk", "dis", "trained")
IMAGE_ONLY = ("lk", "dis")  # methods that need no features


@dataclass(frozen=True)
class TrackerConfig:
    """Point tracker settings; distances in feature-grid cells unless stated otherwise."""

    method: str = "dis"  # the best measured (README "Readouts"); the node's tracks.method too
    search_radius: int = 4  # local window half-size for visible tracks
    center: bool = True  # subtract the frame's mean feature: removes what all cells share
    vis_threshold: float = 0.2  # minimum cosine for a visible match
    vis_relative: float = 0.6  # ... and at least this fraction of the track's usual score
    redetect_threshold: float = 0.4  # global re-acquisition of an occluded track needs this
    redetect_relative: float = 0.8  # ... and this fraction of the track's usual score
    ref_momentum: float = 0.9  # EMA of a track's visible scores (its "usual score")
    template_update: float = 0.0  # EMA rate of the template towards confident matches (0 = fixed)
    candidates: int = 3  # local maxima of the window refined besides the predicted position
    jump_margin: float = 0.05  # cosine a distant mode needs over the continuous one (and LK)
    lk: LKConfig = field(default_factory=LKConfig)
    dis: DISConfig = field(default_factory=DISConfig)
    readout: str = "default"  # method 'trained': the readout's .onnx (or its run folder)
    trained_threshold: float = 0.2  # method 'trained': visible when visibility exceeds this
    # method 'trained': id of the model whose features it reads; a readout trained on another
    # model is refused at construction (None: not checked)
    model_id: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@dataclass
class TrackState:
    """Output of ``PointTracker.update`` for the K active tracks."""

    ids: np.ndarray  # [K] int64 persistent ids
    xy: np.ndarray  # [K,2] float64 image pixels (x, y)
    visible: np.ndarray  # [K] bool
    score: np.ndarray  # [K] float64 match confidence (cosine; LK/DIS: 1 / (1 + fb error px))
    age: np.ndarray  # [K] int64 frames since the track was added


def pixel_to_grid(xy: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int]) -> np.ndarray:
    """Image pixels [...,2] (x,y) -> continuous grid coordinates [...,2] (col, row)."""
    scale = np.array([grid_hw[1] / image_hw[1], grid_hw[0] / image_hw[0]])
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5


def grid_to_pixel(g: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int]) -> np.ndarray:
    """Continuous grid coordinates [...,2] (col, row) -> image pixels [...,2] (x,y)."""
    scale = np.array([image_hw[1] / grid_hw[1], image_hw[0] / grid_hw[0]])
    return (np.asarray(g, dtype=np.float64) + 0.5) * scale - 0.5


def normalize_features(features: np.ndarray, center: bool = False) -> np.ndarray:
    """Feature map [h,w,C] (any float dtype) -> float32 unit vectors per cell (opt. centred)."""
    f = np.asarray(features, dtype=np.float32)
    if center:
        f = f - f.reshape(-1, f.shape[-1]).mean(0)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-6)


def sample_bilinear(features: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Bilinear sample of features [h,w,C] at grid points [K,2] (col,row), clamped -> [K,C]."""
    h, w = features.shape[:2]
    x = np.clip(g[:, 0], 0, w - 1)
    y = np.clip(g[:, 1], 0, h - 1)
    j0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    i0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    fx = (x - j0)[:, None]
    fy = (y - i0)[:, None]
    j1 = np.minimum(j0 + 1, w - 1)
    i1 = np.minimum(i0 + 1, h - 1)
    return (
        (1 - fy) * ((1 - fx) * features[i0, j0] + fx * features[i0, j1])
        + fy * ((1 - fx) * features[i1, j0] + fx * features[i1, j1])
    ).astype(np.float32)


class _FeatureFrame:
    """One frame's unit features plus the neighbour dot products needed for exact cosines."""

    def __init__(self, features: np.ndarray, center: bool) -> None:
        f = normalize_features(features, center)
        self.f = f
        self.hw = f.shape[:2]
        h, w = self.hw
        if h < 2 or w < 2:
            raise ValueError(f"feature grid must be at least 2x2, got {h}x{w}")
        self.flat = f.reshape(h * w, -1)
        self.norm2 = np.sum(f * f, axis=-1)  # 1, or 0 for all-zero cells
        self.right = np.sum(f[:, :-1] * f[:, 1:], axis=-1)  # [h, w-1] <f(i,j), f(i,j+1)>
        self.down = np.sum(f[:-1] * f[1:], axis=-1)  # [h-1, w] <f(i,j), f(i+1,j)>
        self.diag = np.sum(f[:-1, :-1] * f[1:, 1:], axis=-1)  # [h-1, w-1] (i,j)-(i+1,j+1)
        self.anti = np.sum(f[:-1, 1:] * f[1:, :-1], axis=-1)  # [h-1, w-1] (i,j+1)-(i+1,j)
        # The same maps zero-padded to [h,w] and flattened, indexed by cell = i*w + j.
        pad = [np.zeros((h, w), np.float32) for _ in range(4)]
        pad[0][:, :-1], pad[1][:-1], pad[2][:-1, :-1], pad[3][:-1, :-1] = (
            self.right,
            self.down,
            self.diag,
            self.anti,
        )
        self._flat = (self.norm2.ravel(), *(p.ravel() for p in pad))

    def similarity(self, templates: np.ndarray) -> np.ndarray:
        """Dot products of unit templates [K,C] with every cell -> [K,h,w]."""
        return (templates @ self.flat.T).reshape(-1, *self.hw)

    def cosine_at(self, sim: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Exact cosine between templates and bilinearly interpolated features at g [K,M,2]."""
        h, w = self.hw
        x = np.clip(g[..., 0], 0, w - 1)
        y = np.clip(g[..., 1], 0, h - 1)
        j = np.minimum(x.astype(np.int64), w - 2)  # x >= 0, so truncation is floor
        i = np.minimum(y.astype(np.int64), h - 2)
        fx, fy = x - j, y - i
        w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx
        # Flat indices: one gather per corner instead of 3-axis fancy indexing (hot path).
        cell = i * w + j
        s = sim.reshape(len(sim), -1)
        at = np.arange(len(sim))[:, None] * (h * w) + cell
        s = s.ravel()
        num = w00 * s[at] + w01 * s[at + 1] + w10 * s[at + w] + w11 * s[at + w + 1]
        n, r, d, dg, an = self._flat
        den = (
            w00**2 * n[cell]
            + w01**2 * n[cell + 1]
            + w10**2 * n[cell + w]
            + w11**2 * n[cell + w + 1]
            + 2 * (w00 * w01 * r[cell] + w10 * w11 * r[cell + w])
            + 2 * (w00 * w10 * d[cell] + w01 * w11 * d[cell + 1])
            + 2 * (w00 * w11 * dg[cell] + w01 * w10 * an[cell])
        )
        return num / np.sqrt(np.maximum(den, 1e-12))

    def refine(self, sim: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sub-cell cosine maxima near starts [K,M,2] (or [K,2]) -> (pos [K,M,2], cos [K,M])."""
        squeeze = start.ndim == 2
        pos = np.asarray(start, dtype=np.float64).reshape(len(sim), -1, 2)
        k, m = pos.shape[:2]
        best = self.cosine_at(sim, pos)
        rows = np.arange(k)[:, None]
        for offsets in _REFINE_OFFSETS:  # +-2 steps: +-1 cell, then zoom in
            cand = (pos[:, :, None] + offsets).reshape(k, -1, 2)  # [K, M*81, 2]
            cos = self.cosine_at(sim, cand).reshape(k, m, -1)
            idx = np.argmax(cos, axis=2)  # [K,M]
            top = np.take_along_axis(cos, idx[..., None], 2)[..., 0]
            at = cand.reshape(k, m, -1, 2)[rows, np.arange(m)[None], idx]
            better = top > best
            pos = np.where(better[..., None], at, pos)
            best = np.where(better, top, best)
        h, w = self.hw
        pos[..., 0] = np.clip(pos[..., 0], 0, w - 1)
        pos[..., 1] = np.clip(pos[..., 1], 0, h - 1)
        return (pos[:, 0], best[:, 0]) if squeeze else (pos, best)


# The 5x5 candidate offsets (cells) of each refine step, steps 1/2 .. 1/32 (built once).
_REFINE_OFFSETS = [
    np.stack(np.meshgrid(d, d, indexing="xy"), -1).reshape(-1, 2)
    for d in (np.arange(-2, 3) * step for step in (0.5, 0.25, 0.125, 1 / 16, 1 / 32))
]


def _peaks(sim: np.ndarray, center: np.ndarray | None, radius: int | None, n: int) -> np.ndarray:
    """The n best local maxima [K,n,2] (col,row) of sim [K,h,w], within radius of center [K,2]."""
    k, h, w = sim.shape
    s = sim
    if center is not None and radius is not None:
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        c = np.rint(center).astype(np.int64)
        inside = (np.abs(rows - c[:, 1, None, None]) <= radius) & (
            np.abs(cols - c[:, 0, None, None]) <= radius
        )
        s = np.where(inside, sim, -np.inf)
    # Local maxima only, so the n candidates are distinct modes, not one mode's neighbours.
    pad = np.pad(s, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    nb = np.max(
        [
            pad[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ],
        axis=0,
    )
    s = np.where(s >= nb, s, -np.inf).reshape(k, -1)
    n = min(n, h * w)
    flat = np.argpartition(-s, n - 1, axis=1)[:, :n]
    # A window with fewer than n maxima repeats its best one instead of an arbitrary cell.
    best = np.argmax(s, axis=1)[:, None]
    flat = np.where(np.isfinite(np.take_along_axis(s, flat, 1)), flat, best)
    return np.stack([flat % w, flat // w], axis=-1).astype(np.float64)


def _distractor_level(sim: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Best similarity [K] more than 1.5 cells from each query g [K,2] in the query's own frame.

    Coarse features are often not discriminative (a sky patch matches all sky): a jump or a
    re-detection is only trusted when the new match beats this level.
    """
    k, h, w = sim.shape
    rows = np.arange(h)[None, :, None] - g[:, 1, None, None]
    cols = np.arange(w)[None, None, :] - g[:, 0, None, None]
    far = rows**2 + cols**2 > 1.5**2
    return np.max(np.where(far, sim, -1.0).reshape(k, -1), axis=1)


class PointTracker:
    """Streaming point tracker: ``add`` queries, ``update`` once per frame, persistent ids."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._next_id = 0
        self.image_hw: tuple[int, int] | None = None  # camera size: kept across reset()
        self._readout = None  # method 'trained': the ONNX session, kept across reset()
        self.reset()
        if self.config.method == "trained":
            # A readout trained on another model's features would track nonsense: refuse it
            # now, with the one-line reason, not at the first frame.
            self._trained().check_model(self.config.model_id)

    # -- bookkeeping -------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop all tracks and the cached previous frame (ids keep increasing)."""
        self.ids = np.zeros(0, np.int64)
        self.xy = np.zeros((0, 2))
        self.visible = np.zeros(0, bool)
        self.score = np.zeros(0)
        self.age = np.zeros(0, np.int64)
        self._ref = np.zeros(0)  # usual visible score per track (NaN until the first match)
        self._distract = np.zeros(0)  # best similarity away from the query in its own frame
        self._t0: np.ndarray | None = None  # [K,C] query templates
        self._t: np.ndarray | None = None  # [K,C] current templates
        self._frame: _FeatureFrame | None = None
        self._pyr: np.ndarray | None = None
        self._dis: DISFlow | None = None
        self._rstate = np.zeros((0, 0), np.float32)  # method 'trained': per-track state rows
        self._cur: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def remove(self, ids: Iterable[int]) -> None:
        """Stop tracking the given ids (unknown ids are ignored)."""
        keep = ~np.isin(self.ids, np.asarray(list(ids), dtype=np.int64))
        self._select(keep)

    def _select(self, keep: np.ndarray) -> None:
        for name in ("ids", "xy", "visible", "score", "age", "_ref", "_distract"):
            setattr(self, name, getattr(self, name)[keep])
        if self._t0 is not None:
            self._t0, self._t = self._t0[keep], self._t[keep]
        if len(self._rstate):
            self._rstate = self._rstate[keep]

    def state(self) -> TrackState:
        """Current tracks (copies)."""
        return TrackState(
            self.ids.copy(), self.xy.copy(), self.visible.copy(), self.score.copy(), self.age.copy()
        )

    # -- frames ------------------------------------------------------------------------------
    def _ingest(
        self, features: np.ndarray | None, image: np.ndarray | None, image_hw: Sequence[int] | None
    ) -> tuple[_FeatureFrame | None, np.ndarray | None]:
        if image is not None:
            image_hw = np.asarray(image).shape[:2]
        if image_hw is not None:
            self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        if self.image_hw is None:
            raise ValueError("pass image or image_hw once so grid cells can be mapped to pixels")
        frame = pyr = None
        if self.config.method == "trained":
            if features is None or image is None:
                raise ValueError("method 'trained' needs features and the image every frame")
            self._cur = (np.asarray(features), to_gray(image))
            return frame, pyr
        if self.config.method not in IMAGE_ONLY:
            if features is None:
                raise ValueError(f"method {self.config.method!r} needs features every frame")
            frame = _FeatureFrame(features, self.config.center)
        if self.config.method != "rvm":
            if image is None:
                raise ValueError(f"method {self.config.method!r} needs the image every frame")
            pyr = to_gray(image)
        return frame, pyr

    def add(
        self,
        points_xy: np.ndarray,
        features: np.ndarray | None = None,
        image: np.ndarray | None = None,
        image_hw: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Start tracks at points [K,2] (x,y px) of the current frame -> new ids [K].

        Without features/image, the frame last given to ``update`` (or ``add``) is used.
        """
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        if features is not None or image is not None:
            self._frame, self._pyr = self._ingest(features, image, image_hw)
        elif self.image_hw is None:
            raise ValueError("no frame yet: pass features and/or image to add()")
        n = len(pts)
        new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        if self._frame is not None:
            g = pixel_to_grid(pts, self.image_hw, self._frame.hw)
            tmpl = normalize_features(sample_bilinear(self._frame.f, g))
            distract = _distractor_level(self._frame.similarity(tmpl), g)
            if self._t0 is None or len(self.ids) == 0:
                self._t0, self._t = tmpl, tmpl.copy()
            else:
                self._t0 = np.concatenate([self._t0, tmpl])
                self._t = np.concatenate([self._t, tmpl])
        self.ids = np.concatenate([self.ids, new_ids])
        self.xy = np.concatenate([self.xy, pts])
        self.visible = np.concatenate([self.visible, np.ones(n, bool)])
        self.score = np.concatenate([self.score, np.ones(n)])
        self.age = np.concatenate([self.age, np.zeros(n, np.int64)])
        self._ref = np.concatenate([self._ref, np.full(n, np.nan)])
        if self.config.method == "trained" and n:
            self._add_trained(pts)
        if self._frame is None:
            distract = np.full(n, np.inf)
        self._distract = np.concatenate([self._distract, distract])
        return new_ids

    def update(
        self,
        features: np.ndarray | None = None,
        image: np.ndarray | None = None,
        image_hw: Sequence[int] | None = None,
    ) -> TrackState:
        """Advance all tracks to a new frame: features [h,w,C] and/or image uint8 [H,W,3]."""
        frame, pyr = self._ingest(features, image, image_hw)
        if len(self.ids):
            method = self.config.method
            if method == "lk":
                self._update_lk(pyr)
            elif method == "dis":
                self._update_dis(pyr)
            elif method == "trained":
                self._update_trained()
            else:
                self._update_features(frame, pyr if method == "hybrid" else None)
            self.age += 1
        self._frame, self._pyr = frame, pyr
        return self.state()

    # -- readouts ----------------------------------------------------------------------------
    def _update_lk(self, pyr: np.ndarray) -> None:
        new, ok, fb = lk_step(self._pyr, pyr, self.xy, self.config.lk)
        moved = np.isfinite(fb)  # LK status ok: keep following even if the round trip is poor
        self.xy = np.where(moved[:, None], new, self.xy)
        self.visible = ok
        self.score = 1.0 / (1.0 + np.where(moved, fb, np.inf))

    def _update_dis(self, gray: np.ndarray) -> None:
        if self._dis is None:
            self._dis = DISFlow(self.config.dis)
        self.xy, self.visible, fb = dis_step(self._dis, self._pyr, gray, self.xy)
        self.score = 1.0 / (1.0 + fb)

    def _trained(self):
        if self._readout is None:
            from .trained import TrainedReadout

            self._readout = TrainedReadout(self.config.readout)
        return self._readout

    def _add_trained(self, pts: np.ndarray) -> None:
        if self._cur is None:
            raise ValueError("method 'trained': no frame yet, pass features and image to add()")
        ro = self._trained()
        rows = ro.new_rows(pts)
        _, _, rows = ro.step(*self._cur, rows, np.ones(len(pts), bool))
        self._rstate = np.concatenate([self._rstate.reshape(-1, rows.shape[1]), rows])

    def _update_trained(self) -> None:
        ro = self._trained()
        new = np.zeros(len(self.ids), bool)
        self.xy, self.score, self._rstate = ro.step(*self._cur, self._rstate, new)
        self.visible = self.score > self.config.trained_threshold

    def _thresholds(self, relative: float, absolute: float) -> np.ndarray:
        ref = np.where(np.isnan(self._ref), 1.0, self._ref)
        return np.maximum(absolute, relative * ref)

    def _update_features(self, frame: _FeatureFrame, pyr: np.ndarray | None) -> None:
        cfg = self.config
        img_hw, grid_hw = self.image_hw, frame.hw
        tmpl = self._t0 if cfg.template_update <= 0 else normalize_features(self._t0 + self._t)
        sim = frame.similarity(tmpl)
        prev_g = pixel_to_grid(self.xy, img_hw, grid_hw)
        vis_thr = self._thresholds(cfg.vis_relative, cfg.vis_threshold)
        # First match of a fresh track: its usual score is unknown, so only the floor applies.
        vis_thr = np.where(np.isnan(self._ref), cfg.vis_threshold, vis_thr)

        # Local feature match around the previous (or LK-predicted) position: refine from there
        # and from the best local maxima of the window; a distant mode must beat the continuous
        # one by jump_margin (coarse features have near-ties far away).
        lk_ok = np.zeros(len(self.ids), bool)
        center = prev_g
        if pyr is not None:
            new, lk_ok, fb = lk_step(self._pyr, pyr, self.xy, cfg.lk)
            center = np.where(np.isfinite(fb)[:, None], pixel_to_grid(new, img_hw, grid_hw), prev_g)
        starts = np.concatenate(
            [center[:, None], _peaks(sim, center, cfg.search_radius, cfg.candidates)], axis=1
        )
        cand_g, cand_s = frame.refine(sim, starts)
        alt = 1 + np.argmax(cand_s[:, 1:], axis=1)
        rows = np.arange(len(sim))
        alt_g, alt_s = cand_g[rows, alt], cand_s[rows, alt]
        jump = (alt_s > cand_s[:, 0] + cfg.jump_margin) & (alt_s > self._distract)
        g = np.where(jump[:, None], alt_g, cand_g[:, 0])
        s = np.where(jump, alt_s, cand_s[:, 0])
        xy = grid_to_pixel(g, img_hw, grid_hw)
        if pyr is not None:
            # LK is precise when its round trip is consistent; features only overrule it when
            # some mode is clearly better than the feature similarity at the LK position.
            # Features are compared with LK at cell resolution only (best cosine within half a
            # cell): patch features are not shift-equivariant below a cell.
            d = np.arange(-2, 3) * 0.25
            near = np.stack(np.meshgrid(d, d), -1).reshape(-1, 2)
            lk_s = np.max(frame.cosine_at(sim, center[:, None] + near[None]), axis=1)
            far = np.linalg.norm(cand_g - center[:, None], axis=-1) > 1.5
            best_s = np.max(np.where(far, cand_s, -1.0), axis=1)
            # Measured on the synthetic benchmark: letting features overrule a *consistent* LK
            # step made coarse (16x16) features drag points to distractors, so they only take
            # over when LK's forward-backward check fails.
            overrule = (
                ~lk_ok
                & (best_s > lk_s + cfg.jump_margin)
                & (best_s > self._distract + cfg.jump_margin)
            )
            # A poor LK round trip alone does not hand the point to weak features (it only
            # lowers visibility); LK's estimate stays the best guess unless overruled.
            use_lk = np.isfinite(fb) & ~overrule
            xy = np.where(use_lk[:, None], new, xy)
            s = np.where(use_lk, lk_s, s)
        visible = s >= vis_thr
        if pyr is not None:  # without a consistent LK step, only a distinctive match is visible
            visible &= (use_lk & lk_ok) | (~use_lk & (s > self._distract))

        # Re-detection: tracks occluded before this frame search the whole map.
        lost = ~self.visible & ~visible
        if np.any(lost):
            idx = np.flatnonzero(lost)
            sub = sim[idx]
            gg, gs = frame.refine(sub, _peaks(sub, None, None, cfg.candidates))
            best = np.argmax(gs, axis=1)
            gg, gs = gg[np.arange(len(idx)), best], gs[np.arange(len(idx)), best]
            thr = self._thresholds(cfg.redetect_relative, cfg.redetect_threshold)[idx]
            # Re-acquire only a clearly better, distinctive match: weak features would otherwise
            # teleport points that were merely hard for LK.
            found = (
                (gs >= thr)
                & (gs > self._distract[idx] + cfg.jump_margin)
                & (gs > s[idx] + cfg.jump_margin)
            )
            xy[idx[found]] = grid_to_pixel(gg[found], img_hw, grid_hw)
            s[idx[found]] = gs[found]
            visible[idx[found]] = True

        self.xy, self.score, self.visible = xy, s, visible
        m = cfg.ref_momentum
        first = np.isnan(self._ref) & visible
        self._ref = np.where(first, s, self._ref)
        upd = visible & ~first
        self._ref = np.where(upd, m * self._ref + (1 - m) * s, self._ref)
        if cfg.template_update > 0:
            conf = visible & (s >= self._thresholds(cfg.redetect_relative, cfg.redetect_threshold))
            if np.any(conf):
                f = normalize_features(
                    sample_bilinear(frame.f, pixel_to_grid(self.xy[conf], img_hw, grid_hw))
                )
                a = cfg.template_update
                self._t[conf] = normalize_features((1 - a) * self._t[conf] + a * f)


FeatureSource = Iterable[np.ndarray] | Callable[[np.ndarray], np.ndarray] | None


def track_video(
    queries: np.ndarray,
    frames: Iterable[np.ndarray] | None = None,
    features: FeatureSource = None,
    config: TrackerConfig | None = None,
    image_hw: Sequence[int] | None = None,
    num_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal offline tracking: queries [N,3] (t,x,y px) -> tracks [N,T,2], occluded [N,T], score.

    ``frames``: uint8 [H,W,3] images (needed by 'lk'/'hybrid', and to run a callable feature
    source); ``features``: an iterable of [h,w,C] maps, or a callable frame -> [h,w,C] (e.g. a
    streaming model). Frame t only ever sees frames <= t. Before its query frame a track reports
    the query position as occluded (TAP-Vid 'first' convention); at the query frame it is
    visible at the query position.
    """
    tracker = PointTracker(config)
    queries = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
    q_t = np.round(queries[:, 0]).astype(np.int64)
    if len(q_t) and q_t.min() < 0:
        raise ValueError("query frames must be >= 0")
    frame_iter = iter(frames) if frames is not None else None
    feat_iter = None if features is None or callable(features) else iter(features)
    tracks: list[np.ndarray] = []
    occluded: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    n = len(queries)
    row_of_id: dict[int, int] = {}
    t = 0
    while num_frames is None or t < num_frames:
        image = next(frame_iter, None) if frame_iter is not None else None
        if callable(features):
            feat = None if image is None else features(image)
        else:
            feat = next(feat_iter, None) if feat_iter is not None else None
        if image is None and feat is None:
            break
        st = tracker.update(feat, image, image_hw)
        xy = queries[:, 1:].copy()
        occ = np.ones(n, bool)
        sc = np.zeros(n)
        rows = np.array([row_of_id[i] for i in st.ids], dtype=np.int64)
        if len(rows):
            xy[rows], occ[rows], sc[rows] = st.xy, ~st.visible, st.score
        new = np.flatnonzero(q_t == t)
        if len(new):
            ids = tracker.add(queries[new, 1:])
            row_of_id.update(zip(ids.tolist(), new.tolist()))
            occ[new], sc[new] = False, 1.0
        tracks.append(xy)
        occluded.append(occ)
        scores.append(sc)
        t += 1
    if not tracks:
        raise ValueError("no frames")
    return (
        np.stack(tracks, axis=1),
        np.stack(occluded, axis=1),
        np.stack(scores, axis=1),
    )
