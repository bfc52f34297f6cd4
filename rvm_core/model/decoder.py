"""Training-time decoder: reconstructs 95%-masked target frames from the source features."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CrossAttentionTransformer
from .vit import cached_constant, sincos_table


def sample_mask(
    batch: int,
    frames: int,
    num_patches: int,
    ratio: float = 0.95,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random target mask [B,T,N] bool (True = hidden) keeping int(N * (1 - ratio)) per frame."""
    keep = int(num_patches * (1.0 - ratio))
    if keep < 1:
        raise ValueError(f"mask ratio {ratio} hides all {num_patches} patches")
    noise = torch.rand(batch, frames, num_patches, generator=generator, device=device)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    return ranks >= keep


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """Indices [B,T,K] (ascending) of the visible patches of a mask [B,T,N] with K per frame."""
    visible = (~mask).sum(dim=-1)
    keep = int(visible.flatten()[0])
    if not bool((visible == keep).all()):
        raise ValueError("every target frame must have the same number of visible patches")
    # A stable sort puts visible (False) positions first, in ascending index order.
    return mask.to(torch.uint8).argsort(dim=-1, stable=True)[..., :keep]


def delta_one_hot(deltas: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot time gaps [..., classes] float; out-of-range gaps give all zeros (like jax)."""
    return (deltas.unsqueeze(-1) == torch.arange(classes, device=deltas.device)).float()


class Decoder(nn.Module):
    """Cross-attention decoder: masked target tokens attend to all source features."""

    def __init__(
        self,
        dim: int,
        width: int,
        layers: int,
        heads: int,
        mlp: int,
        patch_size: int,
        num_deltas: int,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_deltas = num_deltas
        self.embedder = nn.Linear(dim, width)  # shared by visible target tokens and source kv
        self.delta_embedder = nn.Linear(num_deltas, width)
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        self.transformer = CrossAttentionTransformer(width, layers, heads, mlp)
        self.detokenizer = nn.Linear(width, patch_size * patch_size * 3)
        self._posenc: dict[tuple, torch.Tensor] = {}

    def forward(
        self,
        source_features: torch.Tensor,
        target_tokens: torch.Tensor,
        visible: torch.Tensor,
        grid: tuple[int, int],
        deltas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode targets to patch pixels [B,Tt,N,p*p*3] (patch pixels ordered row, col, rgb).

        source_features [B,Ts,1+N,D]; target_tokens [B,Tt,1+K,D] = encoded CLS + visible
        tokens; visible [B,Tt,K] their grid indices; deltas [B,Tt] int gaps or None.
        """
        b, tt, _, _ = target_tokens.shape
        n = grid[0] * grid[1]
        emb = self.embedder(target_tokens)  # [B,Tt,1+K,W]
        width = emb.shape[-1]
        cls, vis = emb[:, :, :1], emb[:, :, 1:]
        tokens = self.mask_token.to(vis.dtype).expand(b, tt, n, width).clone()
        tokens.scatter_(2, visible.unsqueeze(-1).expand(-1, -1, -1, width), vis)
        posenc = cached_constant(
            self._posenc,
            (n, str(tokens.device)),
            lambda: sincos_table(n, width).astype("float32"),
            tokens.device,
        )
        tokens = tokens + posenc.to(tokens.dtype)
        if deltas is not None:
            gap = self.delta_embedder(delta_one_hot(deltas, self.num_deltas).to(tokens.dtype))
            tokens = tokens + gap.unsqueeze(2)
        queries = torch.cat([cls, tokens], dim=2).flatten(0, 1)  # [B*Tt,1+N,W]
        kv = self.embedder(source_features.flatten(1, 2))  # [B,Ts*(1+N),W], same for all targets
        kv = kv.unsqueeze(1).expand(-1, tt, -1, -1).flatten(0, 1)
        decoded = self.transformer(queries, kv)[:, 1:]  # drop CLS
        return self.detokenizer(decoded).view(b, tt, n, -1)
