"""RVM: a per-frame ViT, a recurrent core carrying a dense state, and a masked-target decoder.

Shapes: B batch, T frames, H x W pixels, p patch size, N = (H/p)(W/p) patch tokens, D width.
Tokens are [CLS, patches row-major]; a frame's features are the core state after that frame,
or with ``fine_features`` that state fused with the frame's stride-8 stem activations at twice
the grid (Nf = 4N tokens; model/fine.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RVMConfig
from .core import AttentionAggregator, GatedTransformerCore
from .decoder import Decoder, visible_indices
from .fine import FineHead
from .stem import SKIP_CHANNELS
from .vit import Encoder, Tokenizer


class RVM(nn.Module):
    """Recurrent Video Masked Autoencoder."""

    def __init__(self, config: RVMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.width
        self.cls_token = nn.Parameter(torch.zeros(1, d))
        self.tokenizer = Tokenizer(config.patch_size, d, config.posenc_grid, config.stem)
        self.encoder = Encoder(d, config.enc_layers, config.enc_heads, config.enc_mlp)
        if config.aggregator == "gru":
            self.core = GatedTransformerCore(
                d, config.core_layers, config.core_heads, config.core_mlp
            )
        else:
            self.core = AttentionAggregator(
                d, config.core_layers, config.core_heads, config.core_mlp, config.attention_window
            )
        self.fine = FineHead(d, SKIP_CHANNELS, config.fine_mlp) if config.fine_features else None
        self.decoder = None
        if config.has_decoder:
            self.decoder = Decoder(
                d,
                config.dec_width,
                config.dec_layers,
                config.dec_heads,
                config.dec_mlp,
                config.patch_size,
                config.num_deltas,
            )
        self.reset_parameters()

    # -- initialisation (the official Flax initialisers) ------------------------------------
    def reset_parameters(self) -> None:
        """Lecun-normal projections, Xavier-uniform MLPs, zero biases, N(0, 0.02) tokens."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith(("dense_in", "dense_out")):
                    nn.init.xavier_uniform_(module.weight)
                else:
                    _lecun_normal_(module.weight, module.in_features)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                _lecun_normal_(module.weight, module.weight[0].numel())
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.fine is not None:
            self.fine.reset_parameters()
        if self.decoder is not None:
            nn.init.normal_(self.decoder.mask_token, std=0.02)

    # -- streaming ---------------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode independent frames [B,3,H,W] in [0,1] -> tokens [B,1+N,D] (before the core)."""
        return self._encode(frames)[0]

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames [B,3,H,W] -> (encoded tokens [B,1+N,D], stem stride-8 map or None)."""
        tokens, skip = self.tokenizer.encode(frames)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return self.encoder(torch.cat([cls, tokens], dim=1)), skip

    def _features(self, state: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Core output [B,1+N,D] -> features [B,1+Nf,D] (the state itself without a fine head)."""
        return state if self.fine is None else self.fine(state, skip)

    def feature_grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Feature grid (h, w) of an input frame of ``image_hw`` pixels."""
        return self.config.feature_grid(image_hw)

    def init_state(self, encoded: torch.Tensor) -> torch.Tensor:
        """Initial (zero) state for a batch of encoded frames [B,1+N,D]."""
        return self.core.init_state(encoded)

    def step(
        self, frame: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One streaming step: frame [B,3,H,W] RGB in [0,1] -> (features [B,1+Nf,D], state)."""
        x, skip = self._encode(frame)
        if state is None:
            state = self.init_state(x)
        out, state = self.core(x, state)
        return self._features(out, skip), state

    def encode_video(self, video: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Stream a video [B,T,3,H,W] from ``state`` (zero) -> features [B,T,1+Nf,D]."""
        b, t = video.shape[:2]
        # Frames are independent in the encoder, so encode them as one batch.
        encoded, skip = self._encode(video.flatten(0, 1))
        encoded = encoded.unflatten(0, (b, t))
        skip = skip.unflatten(0, (b, t)) if self.fine is not None else None
        if state is None:
            state = self.init_state(encoded[:, 0])
        features = []
        for i in range(t):
            out, state = self.core(encoded[:, i], state)
            features.append(self._features(out, None if skip is None else skip[:, i]))
        return torch.stack(features, dim=1)

    # -- training ----------------------------------------------------------------------------
    def reconstruct(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        deltas: torch.Tensor | None,
        mask: torch.Tensor,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct masked targets: source [B,Ts,3,H,W], target [B,Tt,3,H,W] in [0,1],
        deltas [B,Tt] int (target index - first source index) or None, mask [B,Tt,N] bool
        (True = hidden), visible [B,Tt,K] = ``visible_indices(mask)`` -> raw decoder output
        [B,Tt,3,H,W].

        Pass ``visible`` computed where the mask is sampled (on the host): deriving it here
        reads the mask's visible count back from the device, a sync on CUDA and a graph cut on
        XLA and under ``torch.compile``.
        """
        if self.decoder is None:
            raise ValueError("this checkpoint has no decoder (encoder and core only)")
        b, tt, _, h, w = target.shape
        p = self.config.patch_size
        grid = (h // p, w // p)
        features = self.encode_video(source)  # [B,Ts,1+Nf,D]

        if visible is None:
            visible = visible_indices(mask)  # [B,Tt,K]
        tokens = self.tokenizer(target.flatten(0, 1))  # [B*Tt,N,D]
        idx = visible.flatten(0, 1).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        kept = torch.gather(tokens, 1, idx)
        cls = self.cls_token.to(kept.dtype).expand(kept.shape[0], 1, -1)
        encoded = self.encoder(torch.cat([cls, kept], dim=1)).unflatten(0, (b, tt))

        patches = self.decoder(features, encoded, visible, grid, deltas)  # [B,Tt,N,p*p*3]
        return unpatchify(patches, grid, p)

    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        deltas: torch.Tensor | None,
        mask: torch.Tensor,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same as :meth:`reconstruct` (the training forward, so DDP/FSDP wrappers see it)."""
        return self.reconstruct(source, target, deltas, mask, visible)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], p: int) -> torch.Tensor:
    """Patch pixels [B,T,N,p*p*3] (row, col, rgb within a patch) -> images [B,T,3,H,W]."""
    b, t = patches.shape[:2]
    gh, gw = grid
    x = patches.reshape(b, t, gh, gw, p, p, 3)
    return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, t, 3, gh * p, gw * p)


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """Images [B,T,3,H,W] -> patch pixels [B,T,N,p*p*3] (inverse of :func:`unpatchify`)."""
    b, t, c, h, w = images.shape
    x = images.reshape(b, t, c, h // p, p, w // p, p)
    return x.permute(0, 1, 3, 5, 4, 6, 2).reshape(b, t, (h // p) * (w // p), p * p * c)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, p: int, hidden_only: bool = True
) -> torch.Tensor:
    """Pixel L2 (no per-patch normalisation): mean over hidden patches (or all) of [B,T,3,H,W]."""
    err = (patchify(pred.float(), p) - patchify(target.float(), p)).pow(2).mean(dim=-1)  # [B,T,N]
    if not hidden_only:
        return err.mean()
    weight = mask.float()
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def _lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
    # Flax lecun_normal: truncated normal at +-2 std, rescaled so the variance is 1/fan_in.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
