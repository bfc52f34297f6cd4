"""Trained-readout checkpoints (torch side): safetensors weights + JSON metadata, never pickle.

``readout.safetensors`` holds the readout's weights; its metadata records the readout config and
what ``trained_io`` checks: the RVM model it was trained on and the feature grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .trained_io import FORMAT_KEY, META_KEY, READOUT_FORMAT, ReadoutMismatchError


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
