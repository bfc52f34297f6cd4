"""The v2 synthetic suite: a layered scene with exact ground truth (numpy + OpenCV, no torch).

What the v1 suite's single warped plane lacks, on real held-out textures: parallax (layers at
different depths move with the camera in proportion to their inverse depth), smooth non-rigid
deformation, occluders whose own paths leave the frame and come back (long occlusions,
re-appearance), brightness changes (global, per layer and a moving light) and motion blur (each
frame averages sub-frame renders over the exposure).

Every layer maps its texture coordinates s to frame coordinates u by u + D(u, t) = H(t) s, H a
homography and D an analytic smooth flow, both functions of continuous time, and has an
analytic shape in texture coordinates. Rendering, labels, tracks and occlusion flags evaluate
these same functions: a track is its texture point pushed through its layer's warp (D inverted
by fixed-point iteration), occluded when it leaves the frame or a layer in front covers it.
Ground truth and labels refer to the middle of the exposure. Seeded: bit-for-bit reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .synthetic import DEFAULT_ROOT, HELD_OUT_CLIPS, SyntheticSequence, load_sources

TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class LayeredConfig:
    """v2 sequence settings; fractions are of the frame width unless stated otherwise."""

    num_frames: int = 64
    image_hw: tuple[int, int] = (480, 640)
    grid: int = 10  # grid x grid query points over frame 0 ...
    points_per_layer: int = 8  # ... plus this many on each object / occluder visible at frame 0
    period: tuple[float, float] = (40.0, 140.0)  # frames, camera and drift motion periods
    margin: float = 0.4  # the background texture is (1 + margin) x the view
    pan: float = 0.06  # camera pan amplitude at inverse depth 1
    zoom: float = 0.04  # camera dolly: relative scale change at inverse depth 1
    roll: float = 0.03  # camera roll amplitude (radians)
    tilt: float = 0.03  # background perspective (keystone) amplitude
    num_objects: int = 2  # deforming cut-outs in front of the background
    object_radius: tuple[float, float] = (0.13, 0.2)
    inverse_depth: tuple[float, float] = (1.6, 3.0)  # objects' parallax factor (background 1)
    drift: float = 0.05  # objects' own smooth motion amplitude
    wobble: float = 0.01  # objects' non-rigid deformation amplitude
    background_wobble: float = 0.004
    wavelength: tuple[float, float] = (0.3, 0.6)  # deformation wavelengths
    num_sprites: int = 2  # rigid occluders in front of everything, on their own paths
    sprite_radius: tuple[float, float] = (0.1, 0.14)
    sprite_travel: tuple[float, float] = (0.5, 0.7)  # the first sprite's path amplitude
    sprite_period: tuple[float, float] = (0.8, 1.1)  # ... and period, fractions of num_frames
    gain: float = 0.15  # global brightness oscillation amplitude
    layer_gain: float = 0.1  # per-layer brightness oscillation amplitude
    light: float = 0.1  # amplitude of a light pattern moving across the frame
    blur_samples: int = 5  # sub-frame renders averaged per frame (odd; 1 = no motion blur)
    exposure: float = 0.5  # fraction of the frame interval the shutter is open
    noise: float = 2.0  # Gaussian pixel noise sigma (uint8 units)
    texture_frames: tuple[int, ...] = (30, 90)  # clip frames the textures are cut from
    sequences_per_clip: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.blur_samples < 1 or self.blur_samples % 2 == 0:
            raise ValueError(f"blur_samples must be odd and >= 1, got {self.blur_samples}")


class Curve:
    """Sum of 3 random sinusoids of time (frames), 0 at t = 0, peak amplitude about ``amp``."""

    def __init__(self, rng: np.random.Generator, amp: float, period: Sequence[float]) -> None:
        self.period = rng.uniform(*period, size=3)
        self.phase = rng.uniform(0, TWO_PI, size=3)
        self.amp = amp / (np.arange(3) + 1.5)

    def __call__(self, t: float) -> float:
        """Value at time t (frames, may be fractional)."""
        s = np.sin(TWO_PI * t / self.period + self.phase) - np.sin(self.phase)
        return float(np.dot(self.amp, s))


class Wobble:
    """Analytic smooth flow D(u, t) px: 3 plane waves about a moving anchor, amplitudes pulsing."""

    def __init__(
        self, rng: np.random.Generator, amp: float, wavelength: Sequence[float], period: Sequence
    ) -> None:
        ang = rng.uniform(0, TWO_PI, size=3)
        freq = TWO_PI / rng.uniform(*wavelength, size=3)
        self.omega = np.stack([np.cos(ang), np.sin(ang)], -1) * freq[:, None]  # [3,2] rad/px
        d = rng.uniform(0, TWO_PI, size=3)
        self.dirs = np.stack([np.cos(d), np.sin(d)], -1)  # [3,2] displacement directions
        self.phase = rng.uniform(0, TWO_PI, size=3)
        self.amp = amp * np.array([1.0, 0.6, 0.4])
        self.period = rng.uniform(*period, size=3)
        self.t_phase = rng.uniform(0, TWO_PI, size=3)

    @property
    def lipschitz(self) -> float:
        """Upper bound of |grad D| (< 1 makes the fixed-point inversion a contraction)."""
        return float(np.sum(np.abs(self.amp) * np.linalg.norm(self.omega, axis=1)))

    @property
    def max_norm(self) -> float:
        """Upper bound of |D| px."""
        return float(np.sum(np.abs(self.amp)))

    def _amplitudes(self, t: float) -> np.ndarray:
        return self.amp * np.sin(TWO_PI * t / self.period + self.t_phase)  # [3]

    def __call__(self, t: float, u: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """D at time t for frame points u [...,2], waves centred on anchor [2] -> [...,2] px."""
        arg = (u - anchor) @ self.omega.T + self.phase  # [...,3]
        return (np.sin(arg) * self._amplitudes(t)) @ self.dirs

    def on_grid(self, t: float, xs: np.ndarray, ys: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """D on the pixel grid xs [W'] x ys [H'] -> [H',W',2]; equals ``__call__`` there.

        sin(a + b) = sin a cos b + cos a sin b with a from x and b from y: 4 outer products
        instead of a sine per pixel (the renderer's hot path).
        """
        a = (xs[:, None] - anchor[0]) * self.omega[:, 0] + self.phase  # [W',3]
        b = (ys[:, None] - anchor[1]) * self.omega[:, 1]  # [H',3]
        amp = self._amplitudes(t)
        out = np.zeros((len(ys), len(xs), 2))
        for k in range(3):
            wave = np.outer(np.cos(b[:, k]), np.sin(a[:, k])) + np.outer(
                np.sin(b[:, k]), np.cos(a[:, k])
            )
            out += (amp[k] * wave)[..., None] * self.dirs[k]
        return out


def _translate(v: np.ndarray) -> np.ndarray:
    return np.array([[1.0, 0.0, v[0]], [0.0, 1.0, v[1]], [0.0, 0.0, 1.0]])


def _apply(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Homography h [3,3] applied to points p [...,2] -> [...,2]."""
    q = p @ h[:2, :2].T + h[:2, 2]
    z = p @ h[2, :2] + h[2, 2]
    return q / z[..., None]


@dataclass
class Camera:
    """Shared camera motion: pan px, dolly, roll and tilt curves, about the frame centre."""

    pan: tuple[Curve, Curve]
    zoom: Curve
    roll: Curve
    tilt: tuple[Curve, Curve]
    center: np.ndarray  # [2] frame centre px


@dataclass
class Layer:
    """One textured layer: texture [h,w,3] uint8, its placement, motion, shape and brightness."""

    label: int  # label id of its pixels (0 = background)
    texture: np.ndarray
    anchor: np.ndarray  # [2] texture point placed at ``position`` at t = 0
    position: np.ndarray  # [2] frame px
    inverse_depth: float  # parallax factor: 1 = background
    camera: Camera
    drift: Callable[[float], np.ndarray]  # own motion at time t -> [2] px
    wobble: Wobble | None
    radius: np.ndarray | None  # [4] blob (r0, b2, b3, b4) in texture px; None = covers all
    shape_phase: np.ndarray | None  # [3] phases of the blob's harmonics
    gain: Curve
    tilt: bool = False  # apply the camera's keystone (the background plane)

    def homography(self, t: float) -> np.ndarray:
        """H(t) [3,3]: texture coords -> frame coords before the non-rigid flow."""
        cam, rho = self.camera, self.inverse_depth
        shift = self.position + rho * np.array([cam.pan[0](t), cam.pan[1](t)]) + self.drift(t)
        c, s = np.cos(cam.roll(t)), np.sin(cam.roll(t))
        k = 1.0 + rho * cam.zoom(t)
        rot = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0], [0.0, 0.0, 1.0]])
        h = _translate(cam.center) @ rot @ _translate(shift - cam.center - self.anchor)
        if self.tilt:
            hw = np.asarray(self.texture.shape[1::-1], dtype=np.float64)
            key = np.eye(3)
            key[2, :2] = [cam.tilt[0](t) / hw[0], cam.tilt[1](t) / hw[1]]
            h = h @ _translate(self.anchor) @ key @ _translate(-self.anchor)
        return h

    def _flow(self, t: float, u: np.ndarray, h: np.ndarray) -> np.ndarray:
        if self.wobble is None:
            return np.zeros_like(u)
        return self.wobble(t, u, _apply(h, self.anchor))

    def backward(self, t: float, u: np.ndarray) -> np.ndarray:
        """Frame points u [...,2] at time t -> texture points [...,2] (exact, closed form)."""
        h = self.homography(t)
        return _apply(np.linalg.inv(h), u + self._flow(t, u, h))

    def backward_grid(self, t: float, box: tuple[int, int, int, int]) -> np.ndarray:
        """``backward`` of every pixel of the box (r0, r1, c0, c1) -> [r1-r0, c1-c0, 2]."""
        r0, r1, c0, c1 = box
        xs, ys = np.arange(c0, c1, dtype=np.float64), np.arange(r0, r1, dtype=np.float64)
        u = np.stack(np.meshgrid(xs, ys), -1)
        h = self.homography(t)
        if self.wobble is not None:
            u += self.wobble.on_grid(t, xs, ys, _apply(h, self.anchor))
        return _apply(np.linalg.inv(h), u)

    def forward(self, t: float, s: np.ndarray) -> np.ndarray:
        """Texture points s [...,2] -> frame points [...,2] at time t (D inverted to ~1e-12 px)."""
        h = self.homography(t)
        v = _apply(h, s)
        u = v.copy()
        for _ in range(60):  # contraction: Wobble.lipschitz < 1 (checked at construction)
            u = v - self._flow(t, u, h)
        return u

    def contains(self, s: np.ndarray) -> np.ndarray:
        """Texture points s [...,2] inside the layer's shape -> bool [...]."""
        if self.radius is None:
            return np.ones(s.shape[:-1], bool)
        d = s - self.anchor
        theta = np.arctan2(d[..., 1], d[..., 0])
        r0, *b = self.radius
        edge = r0 * (
            1
            + sum(
                bk * np.cos((k + 2) * theta + p)
                for k, (bk, p) in enumerate(zip(b, self.shape_phase))
            )
        )
        return np.hypot(d[..., 0], d[..., 1]) <= edge

    def covers(self, t: float, u: np.ndarray) -> np.ndarray:
        """Frame points u [...,2] at time t on this layer's shape -> bool [...]."""
        return self.contains(self.backward(t, u))

    def bounds(self, t: float, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """Frame pixel box (r0, r1, c0, c1) holding the layer at t, or None when off-frame."""
        h, w = hw
        if self.radius is None:
            return 0, h, 0, w
        ang = np.linspace(0, TWO_PI, 48, endpoint=False)
        r = self.radius[0] * (1 + np.abs(self.radius[1:]).sum()) * 1.1  # > any blob radius
        ring = self.anchor + r * np.stack([np.cos(ang), np.sin(ang)], -1)
        p = _apply(self.homography(t), ring)
        pad = 2 + (self.wobble.max_norm if self.wobble is not None else 0)
        c0, r0 = np.floor(p.min(0) - pad).astype(int)
        c1, r1 = np.ceil(p.max(0) + pad).astype(int) + 1
        r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


@dataclass
class LayeredScene:
    """Layers back to front (layer 0 the background) plus the frame-wide lighting."""

    layers: list[Layer]
    image_hw: tuple[int, int]
    gain: Curve  # global brightness
    light_wave: np.ndarray  # [2] rad/px of the moving light pattern
    light_speed: float  # rad/frame
    config: LayeredConfig

    def front_layer(self, t: float, u: np.ndarray) -> np.ndarray:
        """Index of the front-most layer covering each frame point u [...,2] -> int [...]."""
        out = np.zeros(u.shape[:-1], np.int64)
        for j, layer in enumerate(self.layers[1:], start=1):
            out = np.where(layer.covers(t, u), j, out)
        return out

    def composite(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Unlit render at time t: (image float32 [H,W,3], layer index [H,W] int64)."""
        h, w = self.image_hw
        img = np.empty((h, w, 3), np.float32)
        index = np.zeros((h, w), np.int64)
        for j, layer in enumerate(self.layers):
            box = layer.bounds(t, self.image_hw)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            s = layer.backward_grid(t, box)
            m = s.astype(np.float32)
            patch = cv2.remap(
                layer.texture,
                m[..., 0],
                m[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT101,
            ).astype(np.float32)
            patch *= 1.0 + layer.gain(t)
            if layer.radius is None:  # the background covers the frame
                img[r0:r1, c0:c1] = patch
                continue
            inside = layer.contains(s)
            img[r0:r1, c0:c1][inside] = patch[inside]
            index[r0:r1, c0:c1][inside] = j
        return img, index

    def lighting(self, t: float) -> np.ndarray:
        """Multiplicative brightness [H,W,1] at time t: global gain x a drifting light wave."""
        h, w = self.image_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        arg = xs * self.light_wave[0] + ys * self.light_wave[1] + self.light_speed * t
        wave = 1.0 + self.config.light * np.sin(arg)
        return ((1.0 + self.gain(t)) * wave)[..., None].astype(np.float32)

    def render(self, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Frame t: (uint8 [H,W,3] blurred over the exposure, lit, noisy; labels uint8 [H,W])."""
        cfg = self.config
        n = cfg.blur_samples
        offsets = cfg.exposure * (np.arange(n) / (n - 1) - 0.5) if n > 1 else np.zeros(1)
        acc = np.zeros((*self.image_hw, 3), np.float32)
        labels = None
        for k, dt in enumerate(offsets):
            img, index = self.composite(t + float(dt))
            acc += img
            if k == n // 2:  # the middle sample is exactly time t
                labels = np.array([layer.label for layer in self.layers], np.uint8)[index]
        img = acc / n * self.lighting(t)
        if cfg.noise > 0:
            img = img + rng.normal(0, cfg.noise, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _crop_texture(rng: np.random.Generator, src: np.ndarray, size: int) -> np.ndarray:
    """The most textured of 4 random size x size crops of src, resized to cover it (uint8)."""
    scale = max(size / src.shape[0], size / src.shape[1]) * 1.3
    big = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    best, crop = -1.0, None
    for _ in range(4):  # flat crops (sky, a grey bird) would make layers no method can track
        y0 = rng.integers(0, big.shape[0] - size + 1)
        x0 = rng.integers(0, big.shape[1] - size + 1)
        c = big[y0 : y0 + size, x0 : x0 + size]
        energy = float(cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
        if energy > best:
            best, crop = energy, c
    return np.ascontiguousarray(crop)


def _blob(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth star-shaped blob: (r0, b2, b3, b4) and the harmonics' phases."""
    b = rng.uniform(0.04, 0.12, size=3) / np.array([1.0, 1.5, 2.0])
    return np.concatenate([[radius], b]), rng.uniform(0, TWO_PI, size=3)


def _returning_path(
    rng: np.random.Generator, config: LayeredConfig, travel: float, period_frames: float
) -> Callable[[float], np.ndarray]:
    """A sprite's own path: a wide sinusoid (0 at t=0) that carries it out and back in."""
    w = config.image_hw[1]
    amp = np.array([travel * w * rng.choice([-1, 1]), rng.uniform(0.05, 0.15) * w])
    phase = rng.uniform(0, TWO_PI, size=2)
    period = period_frames * np.array([1.0, rng.uniform(0.7, 1.3)])

    def path(t: float) -> np.ndarray:
        return amp * (np.sin(TWO_PI * t / period + phase) - np.sin(phase))

    return path


def make_scene(
    textures: Sequence[np.ndarray], config: LayeredConfig, rng: np.random.Generator
) -> LayeredScene:
    """Random scene: textures[0] the background, the others cut for objects and sprites."""
    h, w = config.image_hw
    fc = np.array([(w - 1) / 2, (h - 1) / 2])
    per = config.period
    camera = Camera(
        pan=(Curve(rng, config.pan * w, per), Curve(rng, config.pan * w, per)),
        zoom=Curve(rng, config.zoom, per),
        roll=Curve(rng, config.roll, per),
        tilt=(Curve(rng, config.tilt, per), Curve(rng, config.tilt, per)),
        center=fc,
    )
    hs, ws = int(round(h * (1 + config.margin))), int(round(w * (1 + config.margin)))
    bg_tex = cv2.resize(textures[0], (ws, hs), interpolation=cv2.INTER_AREA)
    wl = tuple(x * w for x in config.wavelength)

    def wobble(amp: float) -> Wobble | None:
        if amp <= 0:
            return None
        wob = Wobble(rng, amp * w, wl, per)
        if wob.lipschitz >= 0.5:
            raise ValueError(f"deformation too steep to invert (|grad D| <= {wob.lipschitz:.2f})")
        return wob

    def still(t: float) -> np.ndarray:
        return np.zeros(2)

    layers = [
        Layer(
            0,
            bg_tex,
            np.array([(ws - 1) / 2, (hs - 1) / 2]),
            fc,
            1.0,
            camera,
            still,
            wobble(config.background_wobble),
            None,
            None,
            Curve(rng, config.layer_gain, per),
            tilt=True,
        )
    ]
    others = list(textures[1:]) or list(textures)
    n_layers = config.num_objects + config.num_sprites
    for k in range(n_layers):
        sprite = k >= config.num_objects
        rng_r = config.sprite_radius if sprite else config.object_radius
        radius = rng.uniform(*rng_r) * min(h, w)
        shape, phase = _blob(rng, radius)
        size = int(np.ceil(2 * radius * (1 + shape[1:].sum()) * 1.1)) + 8
        tex = _crop_texture(rng, others[k % len(others)], size)
        anchor = np.array([(size - 1) / 2, (size - 1) / 2])
        rho = rng.uniform(*config.inverse_depth)
        if sprite:
            first = k == config.num_objects  # the first sprite leaves and comes back
            travel = rng.uniform(*config.sprite_travel) if first else rng.uniform(0.1, 0.2)
            span = rng.uniform(*config.sprite_period) if first else rng.uniform(1.5, 3.0)
            drift = _returning_path(rng, config, travel, span * config.num_frames)
            position = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
            wob = None
        else:
            curves = (Curve(rng, config.drift * w, per), Curve(rng, config.drift * w, per))

            def drift(t: float, c=curves) -> np.ndarray:
                return np.array([c[0](t), c[1](t)])

            position = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
            wob = wobble(config.wobble)
        layers.append(
            Layer(
                k + 1,
                tex,
                anchor,
                position,
                rho,
                camera,
                drift,
                wob,
                shape,
                phase,
                Curve(rng, config.layer_gain, per),
            )
        )
    ang = rng.uniform(0, TWO_PI)
    wave = np.array([np.cos(ang), np.sin(ang)]) * TWO_PI / (1.5 * w)
    speed = TWO_PI / rng.uniform(*config.period)
    return LayeredScene(layers, (h, w), Curve(rng, config.gain, per), wave, speed, config)


def _queries(scene: LayeredScene, rng: np.random.Generator) -> np.ndarray:
    """Frame-0 query points [N,2]: a jittered grid plus points on each non-background layer."""
    cfg = scene.config
    h, w = scene.image_hw
    g = (np.arange(cfg.grid) + 0.5) / cfg.grid
    qx, qy = np.meshgrid(g * (w - 1), g * (h - 1))
    q = np.stack([qx, qy], -1).reshape(-1, 2)
    q += rng.uniform(-0.3, 0.3, q.shape) * np.array([w, h]) / cfg.grid
    out = [np.clip(q, 0, [w - 1, h - 1])]
    for j, layer in enumerate(scene.layers[1:], start=1):
        box = layer.bounds(0.0, scene.image_hw)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        cand = rng.uniform([c0, r0], [c1 - 1, r1 - 1], size=(20 * cfg.points_per_layer, 2))
        on = cand[scene.front_layer(0.0, cand) == j]
        out.append(on[: cfg.points_per_layer])
    return np.concatenate(out)


def ground_truth(
    scene: LayeredScene, q0: np.ndarray, num_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tracks of frame-0 points q0 [N,2]: (tracks [N,T,2], occluded [N,T], layer [N], source [N,2]).

    Each point belongs to the front-most layer covering it at frame 0; its track is its texture
    point through that layer's warp; it is occluded outside the frame or under a later layer.
    """
    h, w = scene.image_hw
    layer_of = scene.front_layer(0.0, q0)
    src = np.zeros_like(q0)
    tracks = np.zeros((len(q0), num_frames, 2))
    for j in np.unique(layer_of):
        sel = layer_of == j
        src[sel] = scene.layers[j].backward(0.0, q0[sel])
        for t in range(num_frames):
            tracks[sel, t] = scene.layers[j].forward(float(t), src[sel])
    occluded = np.zeros((len(q0), num_frames), bool)
    for t in range(num_frames):
        p = tracks[:, t]
        out = (p[:, 0] < 0) | (p[:, 0] > w - 1) | (p[:, 1] < 0) | (p[:, 1] > h - 1)
        front = np.zeros(len(p), bool)
        for j, layer in enumerate(scene.layers[1:], start=1):
            front |= (layer_of < j) & layer.covers(float(t), p)
        occluded[:, t] = out | front
    return tracks, occluded, layer_of, src


def track_groups(seq: SyntheticSequence) -> dict[str, np.ndarray]:
    """Masks [N] of a v2 sequence's tracks by what they are on, and those that re-appear."""
    n_obj = seq.scene.config.num_objects
    occ = seq.occluded
    # Hidden at some frame, visible again later: where re-detection is needed.
    later_visible = np.flip(np.cumsum(np.flip(~occ, 1), 1), 1) > 0
    back = (occ[:, :-1] & later_visible[:, 1:]).any(1)
    return {
        "background": seq.layer_of == 0,
        "objects": (seq.layer_of >= 1) & (seq.layer_of <= n_obj),
        "occluders": seq.layer_of > n_obj,
        "reappearing": back,
    }


def make_layered_sequence(
    textures: Sequence[np.ndarray],
    config: LayeredConfig | None = None,
    seed: int | None = None,
    name: str = "layered",
) -> SyntheticSequence:
    """Render one v2 sequence from textures uint8 [h,w,3] (the first is the background)."""
    config = config or LayeredConfig()
    rng = np.random.default_rng(config.seed if seed is None else seed)
    scene = make_scene(textures, config, rng)
    # Queries before the noise: blur, noise and lighting settings never move the ground truth.
    q0 = _queries(scene, rng)
    tracks, occluded, layer_of, src = ground_truth(scene, q0, config.num_frames)
    h, w = config.image_hw
    frames = np.empty((config.num_frames, h, w, 3), np.uint8)
    labels = np.empty((config.num_frames, h, w), np.uint8)
    for t in range(config.num_frames):
        frames[t], labels[t] = scene.render(t, rng)
    query_points = np.concatenate([np.zeros((len(q0), 1)), q0], axis=1)
    return SyntheticSequence(
        name, frames, query_points, tracks, occluded, labels, src, None, scene, layer_of
    )


def make_layered_benchmark(
    config: LayeredConfig | None = None,
    root: str | Path = DEFAULT_ROOT,
    clips: Sequence[str] = HELD_OUT_CLIPS,
    max_sequences: int | None = None,
) -> Iterator[SyntheticSequence]:
    """``sequences_per_clip`` sequences per clip: its frame as background, the others cut in."""
    config = config or LayeredConfig()
    sources = [load_sources(root, clips, i) for i in config.texture_frames]
    n_clips = len(sources[0])
    done = 0
    for k in range(config.sequences_per_clip):
        frames = sources[k % len(sources)]
        others = sources[(k + 1) % len(sources)]
        for i in range(n_clips):
            if max_sequences is not None and done >= max_sequences:
                return
            name = f"{frames[i][0]}_{k}"
            tex = [frames[i][1]] + [others[(i + m) % n_clips][1] for m in range(1, n_clips)]
            seed = config.seed * 1000 + 100 * k + i
            yield make_layered_sequence(tex, config, seed=seed, name=name)
            done += 1
