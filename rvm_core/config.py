"""Model configurations: one small frozen dataclass per size, plus a registry of named sizes.

Also the project's one ``key=value`` parser (:func:`parse_key_values`), for every command line
that overrides settings: training configs, tracker/propagation configs, launch arguments.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

AGGREGATORS = ("gru", "attention")
STEMS = ("patch", "mobilenetv2")


@dataclass(frozen=True)
class RVMConfig:
    """Sizes of an RVM model: ViT encoder, recurrent core and (training-only) decoder."""

    name: str = "custom"
    patch_size: int = 16
    width: int = 384  # token width D of encoder, core and state
    enc_layers: int = 12
    enc_heads: int = 6
    enc_mlp: int = 1536
    core_layers: int = 4
    core_heads: int = 8
    core_mlp: int = 2048
    dec_width: int = 512  # 0 layers = encoder+core only (features, no reconstruction)
    dec_layers: int = 8
    dec_heads: int = 16
    dec_mlp: int = 2048
    posenc_grid: tuple[int, int] = (16, 16)  # grid of the fixed sin/cos table; resized otherwise
    image_size: tuple[int, int] = (256, 256)  # (H, W) the model was trained at
    num_deltas: int = 64  # one-hot classes of the target time gap
    mask_ratio: float = 0.95
    num_source: int = 4  # source frames per training sample (1 = the SiamMAE baseline)
    aggregator: str = "gru"  # "gru" (Transformer-GRU core) or "attention" (ablation)
    attention_window: int = 4  # frames the self-attention aggregator sees (incl. current)
    stem: str = "patch"  # "patch" (linear, official) or "mobilenetv2" (conv, stride 8/16; stem.py)
    # Features at half the patch stride: the state upsampled 2x and fused with the mobilenetv2
    # stem's stride-8 activations (model/fine.py); False = the features are the state.
    fine_features: bool = False
    fine_mlp: int = 256

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem == "mobilenetv2" and self.patch_size not in (8, 16):
            raise ValueError(f"the mobilenetv2 stem has stride 8 or 16; patch is {self.patch_size}")
        if self.fine_features and (self.stem != "mobilenetv2" or self.patch_size != 16):
            raise ValueError("fine_features needs the mobilenetv2 stem at patch_size 16")
        for name, heads, width in (
            ("enc", self.enc_heads, self.width),
            ("core", self.core_heads, self.width),
            ("dec", self.dec_heads, self.dec_width),
        ):
            if width % heads:
                raise ValueError(f"{name} width {width} is not divisible by {heads} heads")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.patch_size}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) at the training image size."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def feature_stride(self) -> int:
        """Input pixels per feature cell: the patch, or half of it with ``fine_features``."""
        return self.patch_size // 2 if self.fine_features else self.patch_size

    def feature_grid(self, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Feature grid (h, w) for an input of ``image_hw`` (default: the training size)."""
        h, w = image_hw or self.image_size
        return h // self.feature_stride, w // self.feature_stride

    @property
    def warmup_steps(self) -> int:
        """Extra steps on a stream's first frame (the warm start): num_source - 1.

        The training loss only reads the state after ``num_source`` frames from the zero state,
        so states of fewer steps are never trained; stepping the first frame ``num_source``
        times gives a state like those training saw (`rvm eval synthetic --warmup 0` measures
        the difference; docs/MODEL_CARD.md). Costs num_source - 1 extra steps once per stream.
        """
        return self.num_source - 1

    @property
    def has_decoder(self) -> bool:
        return self.dec_layers > 0

    def replace(self, **changes: object) -> RVMConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RVMConfig:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown RVMConfig fields: {', '.join(unknown)}")
        for key in ("posenc_grid", "image_size"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


# Official sizes (google-deepmind/representations4d). Encoder+core parameter counts are checked
# in the tests: S 33,222,272.
CONFIGS: dict[str, RVMConfig] = {
    "S": RVMConfig(name="S"),
    "B": RVMConfig(
        name="B", width=768, enc_layers=12, enc_heads=12, enc_mlp=3072, core_heads=12, core_mlp=3072
    ),
    "L": RVMConfig(
        name="L",
        width=1024,
        enc_layers=24,
        enc_heads=16,
        enc_mlp=4096,
        core_heads=16,
        core_mlp=4096,
    ),
    "H": RVMConfig(
        name="H",
        width=1280,
        enc_layers=32,
        enc_heads=16,
        enc_mlp=5120,
        core_heads=16,
        core_mlp=5120,
    ),
    # CPU-sized: 8 px patches on 128x128 frames keep the 16x16 grid of the official table.
    "tiny": RVMConfig(
        name="tiny",
        patch_size=8,
        width=128,
        enc_layers=4,
        enc_heads=4,
        enc_mlp=512,
        core_layers=2,
        core_heads=4,
        core_mlp=512,
        dec_width=128,
        dec_layers=2,
        dec_heads=4,
        dec_mlp=512,
        image_size=(128, 128),
    ),
}


def get_config(name_or_config: str | RVMConfig, **overrides: object) -> RVMConfig:
    """Return a named config (``"S"``, ``"tiny"``, ...) or pass a config through, with overrides."""
    if isinstance(name_or_config, RVMConfig):
        config = name_or_config
    else:
        if name_or_config not in CONFIGS:
            raise ValueError(f"unknown config {name_or_config!r}; choose from {sorted(CONFIGS)}")
        config = CONFIGS[name_or_config]
    return config.replace(**overrides) if overrides else config


def parse_key_values(items: Iterable[str], sep: str = "=", typed: bool = True) -> dict[str, Any]:
    """``key=value`` items -> ``{key: value}`` in order (a repeated key: the last wins).

    ``typed``: values are read as YAML (``true``, ``3``, ``[1, 2]``, ``null``) and numbers YAML
    1.1 leaves as text (``1e-4``, ``inf``) become floats; else values stay strings (launch
    arguments). An item without ``sep`` or with an empty key, or a value YAML cannot read, is a
    one-line ValueError.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, found, text = item.partition(sep)
        key = key.strip()
        if not found or not key:
            raise ValueError(f"{item!r} is not key{sep}value")
        out[key] = _typed_value(key, text) if typed else text
    return out


def _typed_value(key: str, text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{key}: cannot read value {text!r} ({problem})") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
