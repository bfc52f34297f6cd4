"""Training data: video reading, pre-decoding cache, clip sampling, augmentation, loaders."""

from rvm_core.data.bench import measure_loader
from rvm_core.data.cache import (
    CachedVideo,
    CacheIndex,
    build_cache,
    cache_video,
    open_cached,
)
from rvm_core.data.dataset import ClipLoader, VideoClipDataset, build_loader
from rvm_core.data.sampler import ClipSampler, ClipSamplingConfig, sample_clip_indices
from rvm_core.data.splits import DEFAULT_HELDOUT, split_heldout
from rvm_core.data.transforms import CropConfig, apply_crop, sample_crop
from rvm_core.data.video import (
    FrameReader,
    VideoReadError,
    list_videos,
    probe_video,
    read_video,
)

__all__ = [
    "DEFAULT_HELDOUT",
    "CacheIndex",
    "CachedVideo",
    "ClipLoader",
    "ClipSampler",
    "ClipSamplingConfig",
    "CropConfig",
    "FrameReader",
    "VideoClipDataset",
    "VideoReadError",
    "apply_crop",
    "build_cache",
    "build_loader",
    "cache_video",
    "list_videos",
    "measure_loader",
    "open_cached",
    "probe_video",
    "read_video",
    "sample_clip_indices",
    "sample_crop",
    "split_heldout",
]
