"""The trained online point-track readout as a PyTorch module (training and ONNX export).

One call of :meth:`ReadoutNet.step` advances K tracks by one frame; frame t only sees frame t's
features and image plus each track's state, so the readout is causal with a constant cost per
frame. Per track and frame:

1. coarse match: cosine of the track's query feature with every cell of the (mean-centred)
   RVM feature map; a soft-argmax over the whole map proposes a re-detection, and a learned gate
   decides how far to move from the constant-velocity prediction towards it;
2. fine match, coarse to fine over a gray image pyramid (strides 16, 8, 4, 2, 1 px): normalised
   cross-correlation of 7x7 templates (one from the query frame, one from the previous frame at
   the track's last position) over a 7x7 window of displacements; a small MLP per level turns
   the two cost volumes into a position update;
3. a GRU cell over all cost volumes and match scores updates the track's hidden state; heads
   give a last sub-pixel offset, the visibility logit, an uncertainty logit and the velocity.

The whole per-track state is one row of ``state_dim`` floats (see :class:`StateLayout`), so a
new track is a row holding only its query position plus ``new = 1``: the step then samples its
templates and query feature instead of moving it. Coordinates are image pixels (x, y) with pixel
centres at integers; the feature map covers the image uniformly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ReadoutConfig:
    """Readout architecture; feature_dim must match the RVM checkpoint's width."""

    feature_dim: int = 128
    levels: int = 5  # gray pyramid levels, strides 1, 2, 4, 8, 16 px
    patch: int = 7  # template side (level pixels)
    radius: int = 2  # displacement search radius per level (level pixels)
    hidden: int = 96  # GRU state per track
    mlp: int = 96  # width of the per-level update MLPs
    coarse: int = 2  # coarse similarity window radius (cells): (2c+1)^2 samples

    def to_json(self) -> str:
        """This config as a JSON string (stored in checkpoint metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReadoutConfig:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class StateLayout:
    """Column slices of the per-track state row."""

    config: ReadoutConfig

    @property
    def template(self) -> int:
        """Floats of one track's templates over all levels."""
        return self.config.levels * self.config.patch**2

    @property
    def slices(self) -> dict[str, slice]:
        """Name -> columns: xy, vel, vis, hidden, query templates, previous templates, feature."""
        c = self.config
        sizes = [
            ("xy", 2),
            ("vel", 2),
            ("vis", 1),
            ("hidden", c.hidden),
            ("tq", self.template),
            ("tp", self.template),
            ("fq", c.feature_dim),
        ]
        out, at = {}, 0
        for name, n in sizes:
            out[name] = slice(at, at + n)
            at += n
        return out

    @property
    def dim(self) -> int:
        """Total state floats per track."""
        return list(self.slices.values())[-1].stop


def _mlp(n_in: int, width: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, n_out))


def _norm_grid(xy: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates (x, y) of an image [.., H, W] -> grid_sample's [-1, 1] (half-pixel)."""
    h, w = hw
    return torch.stack(
        [(xy[..., 0] + 0.5) * (2.0 / w) - 1.0, (xy[..., 1] + 0.5) * (2.0 / h) - 1.0], -1
    )


class ReadoutNet(nn.Module):
    """Per-frame step of the trained readout (see the module docstring)."""

    def __init__(self, config: ReadoutConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ReadoutConfig()
        self.layout = StateLayout(c)
        p2, d2 = c.patch**2, (2 * c.radius + 1) ** 2
        n_coarse = (2 * c.coarse + 1) ** 2
        self.level_mlps = nn.ModuleList(
            _mlp(2 * d2 + n_coarse + c.hidden, c.mlp, 2) for _ in range(c.levels)
        )
        n_scalar = 5
        self.gate = _mlp(n_coarse + n_scalar + c.hidden, 32, 1)
        self.gru = nn.GRUCell(2 * c.levels * d2 + n_coarse + n_scalar + 2 * c.levels, c.hidden)
        self.head = _mlp(c.hidden + n_scalar, c.mlp, 6)  # dx, dy, vis, unc, vel gate, spare
        self.log_temp = nn.Parameter(torch.tensor(3.0))  # global soft-argmax: cosine x e^3
        with torch.no_grad():
            self.gate[-1].bias.fill_(-3.0)  # start by trusting the local prediction
            for m in self.level_mlps:
                m[-1].weight.mul_(0.1)
                m[-1].bias.zero_()
        n = c.patch + 2 * c.radius
        # Window index of (displacement d, template offset o): one gather builds every
        # displacement's patch from the window, so correlation is one batched product.
        d = torch.arange(2 * c.radius + 1)
        o = torch.arange(c.patch)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        oy, ox = torch.meshgrid(o, o, indexing="ij")
        idx = (dy.reshape(-1, 1) + oy.reshape(1, -1)) * n + (dx.reshape(-1, 1) + ox.reshape(1, -1))
        self.register_buffer("window_index", idx.reshape(-1), persistent=False)
        self.n_window, self.n_disp, self.n_patch = n * n, d2, p2

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def pyramid(gray: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """Gray uint8/float [B,1,H,W] (0..255) -> ``levels`` float images in [0,1], 2x apart."""
        out = [gray.float() * (1.0 / 255.0)]
        for _ in range(levels - 1):
            out.append(F.avg_pool2d(out[-1], 2))
        return out

    @staticmethod
    def _sample(img: torch.Tensor, xy: torch.Tensor, full_hw: tuple[int, int]) -> torch.Tensor:
        """Bilinear samples of img [B,C,h,w] at image-pixel points xy [B,K,M,2] -> [B,K,M,C]."""
        g = _norm_grid(xy, full_hw)
        out = F.grid_sample(img, g, mode="bilinear", padding_mode="border", align_corners=False)
        return out.permute(0, 2, 3, 1)

    @staticmethod
    def _window(
        flat: torch.Tensor, src_hw: tuple[int, int], scale: tuple[float, float], xy, n: int
    ) -> torch.Tensor:
        """n x n window of source pixels centred at image-pixel xy [B,K,2] -> [B,K,n,n].

        ``flat`` [B,h*w] is one map per stream or [B,K*h*w] one per track; a source pixel spans
        ``scale`` (sx, sy) image pixels. Bilinear with border clamping, like grid_sample, but
        the window's points share one fractional offset: one gather of an (n+1)^2 integer block
        and four weights per track instead of n^2 independent samples.
        """
        b, k = xy.shape[:2]
        h, w = src_hw
        sc = torch.tensor(scale, dtype=xy.dtype, device=xy.device)
        tl = (xy + 0.5) / sc - 0.5 - (n - 1) / 2.0  # the window's top-left in source pixels
        base = torch.floor(tl)
        frac = tl - base
        r = torch.arange(n + 1, device=xy.device, dtype=xy.dtype)
        cols = (base[..., 0:1] + r).clamp(0, w - 1)  # [B,K,n+1]
        rows = (base[..., 1:2] + r).clamp(0, h - 1)
        idx = rows[..., :, None] * w + cols[..., None, :]
        if flat.shape[1] != h * w:  # one map per track
            idx = idx + (torch.arange(k, device=xy.device, dtype=xy.dtype) * (h * w))[:, None, None]
        idx = idx.long().reshape(b, k * (n + 1) ** 2)
        block = torch.gather(flat, 1, idx).reshape(b, k, n + 1, n + 1)
        fx = frac[..., 0, None, None]
        fy = frac[..., 1, None, None]
        top = block[..., :-1, :-1] * (1 - fx) + block[..., :-1, 1:] * fx
        bottom = block[..., 1:, :-1] * (1 - fx) + block[..., 1:, 1:] * fx
        return top * (1 - fy) + bottom * fy

    def _level_window(self, img: torch.Tensor, full_hw, xy: torch.Tensor, n: int) -> torch.Tensor:
        """n x n window of a pyramid level img [B,1,h,w] around xy [B,K,2] -> [B,K,n*n]."""
        b, _, h, w = img.shape
        scale = (full_hw[1] / w, full_hw[0] / h)
        return self._window(img.reshape(b, h * w), (h, w), scale, xy, n).flatten(-2)

    @staticmethod
    def _normalise(p: torch.Tensor) -> torch.Tensor:
        """Zero-mean, unit-norm patches over the last axis (flat patches are left ~0)."""
        p = p - p.mean(-1, keepdim=True)
        return p * torch.rsqrt((p * p).sum(-1, keepdim=True) + 1e-4)

    def templates(self, pyr: list[torch.Tensor], xy: torch.Tensor) -> torch.Tensor:
        """Normalised 7x7 patches of every level at xy [B,K,2] -> [B,K,levels*49]."""
        hw = tuple(pyr[0].shape[-2:])
        out = [self._normalise(self._level_window(img, hw, xy, self.config.patch)) for img in pyr]
        return torch.cat(out, -1)

    def cost(self, img: torch.Tensor, full_hw, xy: torch.Tensor, tmpl: list) -> torch.Tensor:
        """NCC of templates [B,K,49] over the displacement window at xy -> [B,K,n_t*n_disp]."""
        c = self.config
        win = self._level_window(img, full_hw, xy, c.patch + 2 * c.radius)
        patches = win[..., self.window_index].reshape(*win.shape[:2], self.n_disp, self.n_patch)
        centred = patches - patches.mean(-1, keepdim=True)
        inv = torch.rsqrt((centred * centred).sum(-1) + 1e-4)  # [B,K,n_disp]
        t = torch.stack(tmpl, -1)  # [B,K,49,n_t]
        corr = torch.matmul(centred, t) * inv[..., None]  # [B,K,n_disp,n_t]
        return corr.transpose(-1, -2).flatten(-2)

    def coarse(
        self, feats: torch.Tensor, fq: torch.Tensor, xy: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query features [B,K,D] vs the map -> (local window [B,K,n], global xy, max, at-xy)."""
        b, d, h, w = feats.shape
        sim = torch.einsum("bkd,bdn->bkn", fq, feats.reshape(b, d, h * w))  # [B,K,hw]
        # Cell centres in image pixels, row-major.
        cy = (torch.arange(h, dtype=sim.dtype, device=sim.device) + 0.5) * (hw[0] / h) - 0.5
        cx = (torch.arange(w, dtype=sim.dtype, device=sim.device) + 0.5) * (hw[1] / w) - 0.5
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # [hw,2]
        att = torch.softmax(sim * self.log_temp.exp(), -1)
        glob = att @ centres
        smax = sim.max(-1).values
        n = 2 * self.config.coarse + 1
        scale = (hw[1] / w, hw[0] / h)
        local = self._window(sim.reshape(b, -1), (h, w), scale, xy, n).flatten(-2)
        at = local[..., local.shape[-1] // 2]
        return local, glob, smax, at

    @staticmethod
    def unit_features(features: torch.Tensor) -> torch.Tensor:
        """Feature map [B,D,h,w] -> mean-centred, unit-norm per cell (what the matcher uses)."""
        f = features.float()
        f = f - f.mean((2, 3), keepdim=True)
        return f * torch.rsqrt((f * f).sum(1, keepdim=True) + 1e-12)

    # -- the step ------------------------------------------------------------------------------
    def step(
        self, features: torch.Tensor, gray: torch.Tensor, state: torch.Tensor, new: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One frame for K tracks of B streams.

        features [B,D,h,w], gray [B,1,H,W] (0..255), state [B,K,S], new [B,K] (1 = the track
        starts at this frame, its state row holds only its query xy) -> dict with ``xy``
        [B,K,2] px, ``vis_logit`` / ``unc_logit`` [B,K], ``visibility`` [B,K] in [0,1] (visible
        and confident), ``state`` [B,K,S] and the intermediate positions ``stages`` [B,K,L,2].
        """
        c, sl = self.config, self.layout.slices
        hw = (int(gray.shape[-2]), int(gray.shape[-1]))
        pyr = self.pyramid(gray, c.levels)
        fmap = self.unit_features(features)
        new = new.to(state.dtype)[..., None]
        xy_in = state[..., sl["xy"]]
        # A new track's query feature and templates come from this frame at its query point.
        fq_new = self._sample(fmap, xy_in[:, :, None], hw)[:, :, 0]
        fq_new = fq_new * torch.rsqrt((fq_new * fq_new).sum(-1, keepdim=True) + 1e-12)
        fq = new * fq_new + (1 - new) * state[..., sl["fq"]]
        tq = new * self.templates(pyr, xy_in) + (1 - new) * state[..., sl["tq"]]
        tp = (1 - new) * state[..., sl["tp"]] + new * tq
        hidden = (1 - new) * state[..., sl["hidden"]]
        vel = (1 - new) * state[..., sl["vel"]]
        vis_prev = new + (1 - new) * state[..., sl["vis"]]
        b, k = xy_in.shape[:2]

        pred = xy_in + vel
        local, glob, smax, at = self.coarse(fmap, fq, pred, hw)
        scal = torch.cat(
            [
                smax[..., None],
                at[..., None],
                (smax - at)[..., None],
                vis_prev,
                torch.sqrt((vel * vel).sum(-1, keepdim=True) + 1e-6) / 32.0,
            ],
            -1,
        )
        gate = torch.sigmoid(self.gate(torch.cat([local, scal, hidden], -1)))
        p = pred + gate * (glob - pred)
        stages, costs, moves = [], [], []
        n = self.layout.template // c.levels
        for lvl in reversed(range(c.levels)):
            tmpl = [tq[..., lvl * n : (lvl + 1) * n], tp[..., lvl * n : (lvl + 1) * n]]
            cv = self.cost(pyr[lvl], hw, p, tmpl)
            dp = self.level_mlps[lvl](torch.cat([cv, local, hidden], -1)) * float(2**lvl * c.radius)
            p = p + dp
            stages.append(p)
            costs.append(cv)
            moves.append(dp / float(2**lvl * c.radius))
        x = torch.cat([*costs, local, scal, *moves], -1).reshape(b * k, -1)
        hidden_new = self.gru(x, hidden.reshape(b * k, -1)).reshape(b, k, -1)
        out = self.head(torch.cat([hidden_new, scal], -1))
        p = p + out[..., :2]
        stages.append(p)
        vis_logit, unc_logit = out[..., 2], out[..., 3]
        visibility = torch.sigmoid(vis_logit) * (1 - torch.sigmoid(unc_logit))
        vel_new = (p - xy_in) * torch.sigmoid(out[..., 4:5] + 2.0)

        # New tracks stay at their query point, visible.
        xy_out = new * xy_in + (1 - new) * p
        visibility = new[..., 0] + (1 - new[..., 0]) * visibility
        tp_new = self.templates(pyr, xy_out)
        parts = {
            "xy": xy_out,
            "vel": (1 - new) * vel_new,
            "vis": visibility[..., None],
            "hidden": (1 - new) * hidden_new,
            "tq": tq,
            "tp": tp_new,
            "fq": fq,
        }
        state_new = torch.cat([parts[name] for name in sl], -1)
        return {
            "xy": xy_out,
            "vis_logit": vis_logit,
            "unc_logit": unc_logit,
            "visibility": visibility,
            "state": state_new,
            "stages": torch.stack(stages, 2),
        }

    def new_state(self, xy: torch.Tensor) -> torch.Tensor:
        """State rows [...,S] of tracks starting at xy [...,2] (pass ``new = 1`` with them)."""
        s = torch.zeros(*xy.shape[:-1], self.layout.dim, dtype=xy.dtype, device=xy.device)
        s[..., self.layout.slices["xy"]] = xy
        return s


class ReadoutStep(nn.Module):
    """The exported graph: one stream, camera frame in, K tracks (ONNX: dynamic K)."""

    def __init__(self, net: ReadoutNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, features: torch.Tensor, gray: torch.Tensor, state: torch.Tensor, new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features [1,D,h,w], gray uint8 [H,W], state [K,S], new [K] -> xy, visibility, state."""
        out = self.net.step(features, gray[None, None], state[None], new[None])
        return out["xy"][0], out["visibility"][0], out["state"][0]
