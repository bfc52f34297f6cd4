"""Small exported ONNX models for the node tests (exported once, cached in .build/test-models)."""

from __future__ import annotations

from pathlib import Path

from rvm_core.export_cache import cached_export

CACHE = Path(__file__).resolve().parent.parent / ".build" / "test-models"


def tiny_onnx(
    input_hw: tuple[int, int] = (64, 64),
    width: int = 32,
    layers: int = 2,
    model_hw: tuple[int, int] = (64, 64),
) -> Path:
    """Random RVM (patch 8, ``width``, ``layers`` encoder+core layers) for ``input_hw`` frames."""
    size = tuple(model_hw)
    model_args = dict(
        width=width,
        enc_layers=layers,
        core_layers=layers,
        enc_heads=2,
        core_heads=2,
        enc_mlp=2 * width,
        core_mlp=2 * width,
        dec_layers=0,
        image_size=size,
        posenc_grid=(size[0] // 8, size[1] // 8),
    )
    return cached_export(
        CACHE,
        f"rvm_w{width}_l{layers}_{input_hw[0]}x{input_hw[1]}_m{size[0]}x{size[1]}",
        "tiny",
        seed=0,
        model_args=model_args,
        input_size=tuple(input_hw),
        model_size=size,
    )
