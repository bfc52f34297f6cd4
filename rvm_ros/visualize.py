"""Debug images: PCA colours of a feature map blended over the frame, with point tracks drawn."""

from __future__ import annotations

import numpy as np


class PCAColorizer:
    """Projects features [C,h,w] on 3 principal components -> RGB uint8 [h,w,3].

    The basis and colour range are fitted on the first frame after ``reset`` and then kept, so
    colours are stable over a sequence (a per-frame PCA flips signs and flickers).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._mean: np.ndarray | None = None
        self._basis: np.ndarray | None = None  # [C,3]
        self._lo = self._hi = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        c, h, w = features.shape
        x = np.asarray(features, np.float32).reshape(c, -1).T  # [hw, C]
        if self._basis is None or self._basis.shape[0] != c:
            self._mean = x.mean(0)
            _, _, vt = np.linalg.svd(x - self._mean, full_matrices=False)
            basis = np.zeros((c, 3), np.float32)
            basis[:, : min(3, vt.shape[0])] = vt[:3].T
            self._basis = basis
            p = (x - self._mean) @ basis
            self._lo, self._hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
        p = (x - self._mean) @ self._basis
        rgb = (p - self._lo) / np.maximum(self._hi - self._lo, 1e-6)
        return (np.clip(rgb, 0, 1) * 255).astype(np.uint8).reshape(h, w, 3)


def debug_image(
    image: np.ndarray,
    colors: np.ndarray,
    xy: np.ndarray,
    visible: np.ndarray,
    ids: np.ndarray | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """Frame RGB [H,W,3] + PCA colours [h,w,3] + tracks xy [N,2] px -> RGB uint8 [H,W,3].

    Visible tracks are green dots, occluded ones red rings; ids are written when given.
    """
    import cv2

    h, w = image.shape[:2]
    up = cv2.resize(colors, (w, h), interpolation=cv2.INTER_NEAREST)
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    out = cv2.addWeighted(up, alpha, gray, 1 - alpha, 0)
    radius = max(2, round(min(h, w) / 120))
    for i, ((x, y), vis) in enumerate(zip(np.asarray(xy), np.asarray(visible))):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        c = (int(round(x)), int(round(y)))
        if vis:
            cv2.circle(out, c, radius, (0, 255, 0), -1, cv2.LINE_AA)
        else:
            cv2.circle(out, c, radius, (255, 0, 0), 1, cv2.LINE_AA)
        if ids is not None and min(h, w) >= 240:
            cv2.putText(
                out,
                str(int(ids[i])),
                (c[0] + radius + 1, c[1]),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return out


# Mask colours (RGB) by label id; id 0 (background) is left uncoloured.
_PALETTE = np.array(
    [
        (0, 0, 0),
        (255, 64, 64),
        (64, 160, 255),
        (255, 200, 0),
        (200, 80, 255),
        (0, 220, 140),
        (255, 128, 0),
        (255, 255, 255),
    ],
    np.uint8,
)


def overlay_mask(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB [H,W,3] + label ids [H,W] -> RGB with each object tinted and outlined."""
    import cv2

    out = image.copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        color = _PALETTE[1 + (int(label) - 1) % (len(_PALETTE) - 1)]
        sel = labels == label
        out[sel] = (out[sel] * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(
            sel.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 2, cv2.LINE_AA)
    return out


def draw_trails(
    image: np.ndarray, trails: dict[int, list[tuple[float, float]]], visible: dict[int, bool]
) -> np.ndarray:
    """Draw each track's recent positions as a fading line, its head as a dot with its id."""
    import cv2

    out = image
    h, w = out.shape[:2]
    radius = max(2, round(min(h, w) / 120))
    for tid, pts in trails.items():
        pts = [(int(round(x)), int(round(y))) for x, y in pts if np.isfinite(x) and np.isfinite(y)]
        if not pts:
            continue
        for k in range(1, len(pts)):
            shade = int(80 + 175 * k / len(pts))
            cv2.line(out, pts[k - 1], pts[k], (shade, shade, 0), 1, cv2.LINE_AA)
        head = pts[-1]
        if visible.get(tid, False):
            cv2.circle(out, head, radius, (0, 255, 0), -1, cv2.LINE_AA)
        else:
            cv2.circle(out, head, radius, (255, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(
            out,
            str(tid),
            (head[0] + radius + 1, head[1] - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out
