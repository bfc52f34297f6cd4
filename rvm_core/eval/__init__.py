"""Evaluation metrics (numpy only, safe to import without torch)."""

from rvm_core.eval.metrics import (
    DAVIS_VOID_LABEL,
    TAPVID_RESOLUTION,
    TAPVID_THRESHOLDS,
    davis_aggregate,
    davis_f,
    davis_j,
    davis_statistics,
    davis_summary,
    rescale_points,
    seg2bmap,
    tapvid_mean,
    tapvid_metrics,
)

__all__ = [
    "DAVIS_VOID_LABEL",
    "TAPVID_RESOLUTION",
    "TAPVID_THRESHOLDS",
    "davis_aggregate",
    "davis_f",
    "davis_j",
    "davis_statistics",
    "davis_summary",
    "rescale_points",
    "seg2bmap",
    "tapvid_mean",
    "tapvid_metrics",
]
