"""Small exported ONNX models for the node tests (exported once, cached in .build/test-models)."""

from __future__ import annotations

import fcntl
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".build" / "test-models"


def tiny_onnx(
    input_hw: tuple[int, int] = (64, 64),
    width: int = 32,
    layers: int = 2,
    model_hw: tuple[int, int] = (64, 64),
) -> Path:
    """Random RVM (patch 8, ``width``, ``layers`` encoder+core layers) for ``input_hw`` frames."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"rvm_w{width}_l{layers}_{input_hw[0]}x{input_hw[1]}_m{model_hw[0]}.onnx"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist / parallel runs export once
        if not out.is_file():
            from rvm_core.checkpoint import build_model
            from rvm_core.export import export_onnx

            size = tuple(model_hw)
            model = build_model(
                "tiny",
                seed=0,
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
            export_onnx(model, out, input_size=input_hw, model_size=size)
    return out
