"""Training data: video reading, pre-decoding cache, clip sampling, augmentation, loaders.

Names are imported lazily so torch-free parts (``rvm_core.data.video``) can be used by the
deployment side without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "measure_loader": "bench",
    "CachedVideo": "cache",
    "CacheIndex": "cache",
    "build_cache": "cache",
    "cache_video": "cache",
    "open_cached": "cache",
    "ClipLoader": "dataset",
    "VideoClipDataset": "dataset",
    "build_loader": "dataset",
    "ClipSampler": "sampler",
    "ClipSamplingConfig": "sampler",
    "sample_clip_indices": "sampler",
    "DEFAULT_HELDOUT": "splits",
    "split_heldout": "splits",
    "CropConfig": "transforms",
    "apply_crop": "transforms",
    "sample_crop": "transforms",
    "FrameReader": "video",
    "VideoReadError": "video",
    "list_videos": "video",
    "probe_video": "video",
    "read_video": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rvm_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
