"""Trained-readout names and checks shared by both sides (no torch: the node imports this).

A readout records the RVM checkpoint it was trained on (path and ``model_id``: config name +
weight hash) and the feature grid, so running it on other features fails with one line. The
safetensors side (torch) is ``trained_checkpoint``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

READOUT_FORMAT = "rvm-readout-v1"
FORMAT_KEY = "format"
META_KEY = "rvm_readout"
# The readout trained for the shipped default model (rvm_core/weights).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_READOUT = WEIGHTS_DIR / "readout_default.onnx"


class ReadoutMismatchError(ValueError):
    """A trained readout is used with features of another model (or is unreadable)."""


def resolve_readout(path: str | os.PathLike) -> Path:
    """``"default"`` -> the shipped readout's ONNX file; a directory -> its readout.onnx."""
    if str(path) == "default":
        return DEFAULT_READOUT
    p = Path(path)
    return p / "readout.onnx" if p.is_dir() else p


def check_model(meta: dict[str, Any], model_id: str | None, source: str = "readout") -> None:
    """Raise one line if the readout was trained on another model than ``model_id``."""
    want = meta.get("model_id")
    if model_id is not None and want is not None and model_id != want:
        raise ReadoutMismatchError(
            f"{source} was trained on model {want} ({meta.get('model_checkpoint', '?')}), "
            f"not {model_id}: retrain with `rvm train-readout --checkpoint <that checkpoint>`"
        )
