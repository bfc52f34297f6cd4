"""Trained-readout checkpoints: safetensors weights + JSON metadata naming the RVM model.

``readout.safetensors`` holds the readout's weights; its metadata records the readout config,
the RVM checkpoint it was trained on (path and ``model_id``: config name + weight hash) and the
feature grid, so running it on other features fails with one line. Never pickle.
"""

from __future__ import annotations

import json
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


def save_readout(net: Any, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write the readout's weights and ``meta`` (model id, grid, ...) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    info = dict(meta, readout_config=json.loads(net.config.to_json()))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={FORMAT_KEY: READOUT_FORMAT, META_KEY: json.dumps(info)})
    os.replace(tmp, path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a readout .safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ReadoutMismatchError(f"{path}: unreadable readout checkpoint ({exc})") from exc
    if meta.get(FORMAT_KEY) != READOUT_FORMAT:
        raise ReadoutMismatchError(
            f"{path}: not a trained readout (format {meta.get(FORMAT_KEY)!r})"
        )
    return json.loads(meta[META_KEY])


def load_readout(path: str | os.PathLike):
    """A ReadoutNet (eval mode) and its metadata from a readout .safetensors file."""
    from safetensors.torch import load_file

    from .trained_net import ReadoutConfig, ReadoutNet

    meta = read_meta(path)
    net = ReadoutNet(ReadoutConfig(**meta["readout_config"]))
    net.load_state_dict(load_file(str(path)))
    return net.eval(), meta


def check_model(meta: dict[str, Any], model_id: str | None, source: str = "readout") -> None:
    """Raise one line if the readout was trained on another model than ``model_id``."""
    want = meta.get("model_id")
    if model_id is not None and want is not None and model_id != want:
        raise ReadoutMismatchError(
            f"{source} was trained on model {want} ({meta.get('model_checkpoint', '?')}), "
            f"not {model_id}: retrain with `rvm train-readout --checkpoint <that checkpoint>`"
        )
