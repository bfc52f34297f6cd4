"""Readers for published evaluation datasets: TAP-Vid (pickle / .npz) and DAVIS-2017 folders.

No torch. Unpickling can execute code, so TAP-Vid pickles are only read with ``trust_pickle=True``
(the ``--trust-pickle`` flag); ``tapvid_to_npz`` converts them once to pickle-free ``.npz`` files.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

TAPVID_QUERY_STRIDE = 5  # tapnet's 'strided' mode: a query every 5 frames per visible point


@dataclass
class TapVidVideo:
    """One TAP-Vid video: frames and normalised annotations (tapnet's raw format)."""

    name: str
    video: np.ndarray  # [T,H,W,3] uint8
    points: np.ndarray  # [N,T,2] (x, y) in [0, 1]
    occluded: np.ndarray  # [N,T] bool


def _decode_frames(video: object) -> np.ndarray:
    """uint8 array [T,H,W,3], or a list of JPEG/PNG bytes (TAP-Vid Kinetics) -> [T,H,W,3]."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4:
        return video
    frames = []
    for buf in video:  # encoded frames
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("undecodable frame in TAP-Vid video")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def _from_record(name: str, rec: Mapping) -> TapVidVideo:
    return TapVidVideo(
        name,
        _decode_frames(rec["video"]),
        np.asarray(rec["points"], dtype=np.float64),
        np.asarray(rec["occluded"], dtype=bool),
    )


def read_tapvid(path: str | Path, trust_pickle: bool = False) -> Iterator[TapVidVideo]:
    """Videos of a TAP-Vid .pkl (DAVIS dict / Kinetics list), an .npz, or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pkl", ".npz"))
        if not files:
            raise FileNotFoundError(f"no .pkl or .npz files in {path}")
        for f in files:
            yield from read_tapvid(f, trust_pickle)
        return
    if not path.is_file():
        raise FileNotFoundError(f"TAP-Vid data not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            yield TapVidVideo(
                str(z["name"]) if "name" in z else path.stem,
                _decode_frames(z["video"]),
                z["points"].astype(np.float64),
                z["occluded"].astype(bool),
            )
        return
    if not trust_pickle:
        raise ValueError(
            f"{path.name} is a pickle, which can run arbitrary code: pass --trust-pickle only for "
            "files from a trusted source, or convert once with tapvid_to_npz"
        )
    with open(path, "rb") as fh:
        data = pickle.load(fh)  # noqa: S301 - guarded by the explicit trust flag above
    items = data.items() if isinstance(data, Mapping) else ((str(i), r) for i, r in enumerate(data))
    for name, rec in items:
        yield _from_record(f"{path.stem}/{name}" if not isinstance(data, Mapping) else name, rec)


def tapvid_to_npz(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Convert a trusted TAP-Vid pickle into one pickle-free .npz per video."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for v in read_tapvid(path, trust_pickle=True):
        dst = out_dir / f"{v.name.replace('/', '_')}.npz"
        np.savez_compressed(
            dst, name=np.str_(v.name), video=v.video, points=v.points, occluded=v.occluded
        )
        written.append(dst)
    return written


def tapvid_queries(occluded: np.ndarray, points_px: np.ndarray, mode: str) -> np.ndarray:
    """Query points [Q,3] (t, x, y px) and their track index [Q] as tapnet samples them.

    'first': one query per point at its first visible frame; 'strided': a query every
    ``TAPVID_QUERY_STRIDE`` frames at each visible point. Returns (queries, track_index).
    """
    rows, ts = [], []
    for i, occ in enumerate(occluded):
        vis = np.flatnonzero(~occ)
        if not len(vis):
            continue
        if mode == "first":
            chosen = vis[:1]
        elif mode == "strided":
            chosen = [t for t in range(0, occ.shape[0], TAPVID_QUERY_STRIDE) if not occ[t]]
        else:
            raise ValueError(f"query mode must be 'first' or 'strided', got {mode!r}")
        rows += [i] * len(chosen)
        ts += list(chosen)
    rows_a, ts_a = np.asarray(rows, np.int64), np.asarray(ts, np.int64)
    q = np.concatenate([ts_a[:, None].astype(np.float64), points_px[rows_a, ts_a]], axis=1)
    return q.reshape(-1, 3), rows_a


# -- DAVIS-2017 ------------------------------------------------------------------------------


@dataclass
class DavisSequence:
    """A DAVIS sequence: frames [T,H,W,3] uint8 and label ids [T,H,W] uint8 (255 = void)."""

    name: str
    frames: np.ndarray
    labels: np.ndarray


def read_label_png(path: str | Path) -> np.ndarray:
    """Label ids [H,W] from a palette PNG (DAVIS), a gray PNG, or an RGB one (colours -> ids)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "L", "I", "I;16"):
            return np.asarray(im).astype(np.int64)
        rgb = np.asarray(im.convert("RGB"))
    # Colour masks: black is background, other colours are numbered in sorted order.
    colours, inv = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    black = np.flatnonzero(~colours.any(axis=1))
    order = np.argsort(
        [0 if i in black else 1 for i in range(len(colours))], kind="stable"
    )  # black first
    rank = np.empty(len(colours), np.int64)
    rank[order] = np.arange(len(colours))
    if not len(black):
        rank += 1
    return rank[inv.ravel()].reshape(rgb.shape[:2])


def davis_sequences(root: str | Path, split: str = "val", resolution: str = "480p") -> list[str]:
    """Sequence names of a DAVIS-2017 split (ImageSets/2017/<split>.txt)."""
    listing = Path(root) / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"DAVIS split list not found: {listing}")
    return [s.strip() for s in listing.read_text().splitlines() if s.strip()]


def read_davis(
    root: str | Path, split: str = "val", resolution: str = "480p", max_sequences: int | None = None
) -> Iterator[DavisSequence]:
    """Sequences of a DAVIS-2017 folder (JPEGImages/<res>, Annotations/<res>, ImageSets/2017)."""
    from ..data.video import read_video

    root = Path(root)
    names = davis_sequences(root, split, resolution)
    for name in names[:max_sequences]:
        frames = read_video(root / "JPEGImages" / resolution / name)
        ann_dir = root / "Annotations" / resolution / name
        pngs = sorted(ann_dir.glob("*.png"))
        if not pngs:
            raise FileNotFoundError(f"no annotations in {ann_dir}")
        labels = np.stack([read_label_png(p) for p in pngs]).astype(np.uint8)
        if len(labels) != len(frames):
            raise ValueError(f"{name}: {len(frames)} frames but {len(labels)} annotations")
        yield DavisSequence(name, frames, labels)
