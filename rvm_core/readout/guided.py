"""Image-guided upsampling of coarse soft labels: the fast guided filter (numpy + OpenCV).

He, Sun & Tang's guided filter with a colour guide: in every window the output is an affine
function of the guide's RGB (q = a . I + b, a fitted by ridge regression of the soft labels on
the colours), so label boundaries move to the image's edges. The fast variant (He & Sun 2015)
fits a and b on the guide subsampled by ``subsample`` and upsamples them, which keeps the cost
at a few passes over the camera frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from .channels import by_four_channels


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows of every channel of x [h,w,C] (reflected border)."""
    k = (2 * radius + 1, 2 * radius + 1)
    return by_four_channels(
        lambda part: cv2.boxFilter(part, -1, k, normalize=True, borderType=cv2.BORDER_REFLECT),
        x,
        x.shape[:2],
    )


def _resize(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of every channel of x [h,w,C] float32 to hw (align_corners=False)."""
    size = (hw[1], hw[0])
    return by_four_channels(
        lambda part: cv2.resize(part, size, interpolation=cv2.INTER_LINEAR), x, hw
    )


def _inverse(m: np.ndarray) -> np.ndarray:
    """Inverses of symmetric positive definite [n,c,c] matrices, c = 1 or 3 (closed form).

    The adjugate formula is several times faster than a batched LAPACK solve for 3x3.
    """
    if m.shape[-1] == 1:
        return 1.0 / m
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 1], m[:, 1, 2], m[:, 2, 2]
    adj = np.stack(
        [d * f - e * e, c * e - b * f, b * e - c * d,
         c * e - b * f, a * f - c * c, b * c - a * e,
         b * e - c * d, b * c - a * e, a * d - b * b],
        -1,
    ).reshape(-1, 3, 3)  # fmt: skip
    det = a * adj[:, 0, 0] + b * adj[:, 1, 0] + c * adj[:, 2, 0]
    return adj / det[:, None, None]


def guided_upsample(
    soft: np.ndarray, guide: np.ndarray, radius: int = 16, eps: float = 1e-2, subsample: int = 4
) -> np.ndarray:
    """Soft labels [h,w,L] on a coarse grid -> [H,W,L] following the edges of guide [H,W,3].

    ``guide`` is the camera frame (uint8 RGB, or gray [H,W]); ``radius`` is the filter window's
    half-size in camera pixels, ``eps`` the ridge regulariser on [0,1] intensities (larger =
    smoother, closer to the bilinear input).
    """
    g = np.asarray(guide, dtype=np.float32) / 255.0
    if g.ndim == 2:
        g = g[..., None]
    big_hw = g.shape[:2]
    s = max(int(subsample), 1)
    small_hw = (max(big_hw[0] // s, 1), max(big_hw[1] // s, 1))
    r = max(int(round(radius / s)), 1)
    gi = cv2.resize(g, small_hw[::-1], interpolation=cv2.INTER_AREA).reshape(*small_hw, -1)
    p = _resize(np.asarray(soft, np.float32), small_hw)
    n, c, lab = small_hw[0] * small_hw[1], gi.shape[-1], p.shape[-1]
    mean_i = _box(gi, r).reshape(n, c)
    mean_p = _box(p, r).reshape(n, lab)
    ii = np.concatenate([gi[..., k : k + 1] * gi for k in range(c)], -1)
    cov_ii = _box(ii, r).reshape(n, c, c) - mean_i[:, :, None] * mean_i[:, None, :]
    ip = np.concatenate([gi[..., k : k + 1] * p for k in range(c)], -1)
    cov_ip = _box(ip, r).reshape(n, c, lab) - mean_i[:, :, None] * mean_p[:, None, :]
    a = _inverse(cov_ii + eps * np.eye(c, dtype=np.float32)) @ cov_ip  # [n, c, L]
    b = mean_p - np.einsum("nc,ncl->nl", mean_i, a)
    ab = np.concatenate([a.reshape(*small_hw, c * lab), b.reshape(*small_hw, lab)], -1)
    ab = _box(ab.astype(np.float32), r)
    # Camera resolution one contiguous plane at a time: strided channel slices are ~5x slower.
    size = (big_hw[1], big_hw[0])
    up = [
        cv2.resize(np.ascontiguousarray(ab[..., i]), size, interpolation=cv2.INTER_LINEAR)
        for i in range(ab.shape[-1])
    ]
    guide_planes = [np.ascontiguousarray(g[..., k]) for k in range(c)]
    out = []
    for label in range(lab):
        q = up[c * lab + label]  # b, a fresh array: accumulate a . I into it
        for k in range(c):
            q += guide_planes[k] * up[k * lab + label]
        out.append(q)
    return np.stack(out, -1)
