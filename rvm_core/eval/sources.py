"""Feature sources compared by ``rvm eval synthetic``: checkpoints and what they are measured
against (their tokenizer alone, random weights, dense SIFT, raw pixels), all on one grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..readout.features import (
    ModelFeatures,
    PixelFeatures,
    SiftFeatures,
    TokenizerFeatures,
)

# model: the checkpoint's features; tokenizer: its tokenizer output alone; random: the same
# architecture with random weights; sift / pixels: classical descriptors on the model's grid.
FEATURE_SOURCES = ("model", "tokenizer", "sift", "pixels", "random")

SourceFactory = Callable[[], Any]


def parse_sources(text: str) -> list[str]:
    """Comma-separated source names -> list (order kept); an unknown name is a ValueError."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FEATURE_SOURCES]
    if unknown or not names:
        raise ValueError(
            f"unknown feature source(s) {', '.join(unknown) or repr(text)}; "
            f"valid: {', '.join(FEATURE_SOURCES)}"
        )
    return names


def load_checkpoint(checkpoint: str, device: str = "cpu") -> Any:
    """A model from a checkpoint path, or random weights from a config name ("tiny", "S"...)."""
    from ..checkpoint import build_model, load_model
    from ..config import CONFIGS

    if checkpoint in CONFIGS:
        return build_model(checkpoint, seed=0).to(device).eval()
    return load_model(checkpoint, device=device)


def random_like(model: Any, seed: int = 0, device: str = "cpu") -> Any:
    """Same architecture as ``model`` with fresh random weights (the untrained baseline)."""
    from ..checkpoint import build_model

    return build_model(model.config, seed=seed).to(device).eval()


def checkpoint_label(path: str, taken: dict) -> str:
    """Row label of one of several checkpoints: its run directory (or file) name, unique."""
    p = Path(path)
    label = p.parent.name if p.name == "model.safetensors" else p.stem
    return label if label not in taken else f"{label}#{len(taken)}"


def feature_sources(
    names: Sequence[str],
    checkpoints: Sequence[str],
    size: tuple[int, int] | None = None,
    grid: tuple[int, int] | None = None,
    pixel_grid: tuple[int, int] | None = None,
    device: str = "cpu",
    warmup: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, SourceFactory], dict[str, dict]]:
    """Factories of the named sources by row label, and a description of each (for JSON).

    ``grid`` (default: the first checkpoint's feature grid at ``size``) is the grid of the
    tokenizer, sift and pixels sources; ``pixel_grid`` overrides it for pixels. Model and random
    sources have the grid their architecture gives at ``size``. A config name as a checkpoint
    means random weights: its "model" row is the "random" row. Every source is built once here,
    so a source that cannot work fails before the benchmark runs.
    """
    from ..config import CONFIGS

    names = list(names)
    loaded = [(c, load_checkpoint(c, device)) for c in checkpoints]
    base = loaded[0][1]
    size = tuple(size or base.config.image_size)
    grid = tuple(grid or base.feature_grid(size))
    trained = [(c, m) for c, m in loaded if c not in CONFIGS]
    if "model" in names and not trained and "random" not in names:
        names.append("random")
    factories: dict[str, SourceFactory] = {}
    about: dict[str, dict] = {}
    taken: dict[str, Any] = {}
    for ckpt, model in trained if "model" in names else []:
        label = "trained" if len(loaded) == 1 else checkpoint_label(ckpt, taken)
        taken[label] = model
        factories[label] = lambda m=model: ModelFeatures(m, size, device, warmup)
        about[label] = {"source": "model", "checkpoint": ckpt}
    for ckpt, model in loaded if "tokenizer" in names else []:
        label = "tokenizer" if len(loaded) == 1 else f"tokenizer:{checkpoint_label(ckpt, {})}"
        factories[label] = lambda m=model: TokenizerFeatures(m, size, device, grid)
        about[label] = {"source": "tokenizer", "checkpoint": ckpt}
    if "random" in names:
        rnd = random_like(base, seed=seed, device=device)
        factories["random"] = lambda: ModelFeatures(rnd, size, device, warmup)
        about["random"] = {"source": "random", "checkpoint": checkpoints[0], "seed": seed}
    if "sift" in names:
        factories["sift"] = lambda: SiftFeatures(grid)
        about["sift"] = {"source": "sift"}
    if "pixels" in names:
        pg = tuple(pixel_grid or grid)
        factories["pixels"] = lambda: PixelFeatures(pg)
        about["pixels"] = {"source": "pixels"}
    for label, make in factories.items():
        src = make()
        about[label]["grid"] = list(src.grid_hw)
        if hasattr(src, "size"):
            about[label]["input_size"] = list(src.size)
    return factories, about
