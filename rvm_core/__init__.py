"""rvm_core: Recurrent Video Masked Autoencoders in PyTorch (model, checkpoints, training, eval).

Names are imported lazily so numpy-only parts (``rvm_core.eval``, ``rvm_core.readout``) can be
used by the deployment side without PyTorch installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONFIGS": "config",
    "RVMConfig": "config",
    "get_config": "config",
    "RVM": "model",
    "CheckpointError": "checkpoint",
    "build_model": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rvm_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
