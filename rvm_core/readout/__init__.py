"""Readouts on dense features: point tracking and label propagation (numpy + OpenCV, no torch).

``features`` adds the feature sources (a streaming RVM model - torch, imported lazily - or raw
pixel patches); everything else here is safe for the deployment side without PyTorch.
"""

from rvm_core.readout.dis import DISConfig, FlowMaskPropagator, propagate_flow
from rvm_core.readout.guided import guided_upsample
from rvm_core.readout.lk import LKConfig
from rvm_core.readout.propagation import LabelPropagator, PropagationConfig, propagate_labels
from rvm_core.readout.tracker import (
    METHODS,
    PointTracker,
    TrackerConfig,
    TrackState,
    grid_to_pixel,
    pixel_to_grid,
    track_video,
)

__all__ = [
    "DISConfig",
    "FlowMaskPropagator",
    "LKConfig",
    "LabelPropagator",
    "METHODS",
    "PointTracker",
    "PropagationConfig",
    "TrackState",
    "TrackerConfig",
    "grid_to_pixel",
    "guided_upsample",
    "pixel_to_grid",
    "propagate_flow",
    "propagate_labels",
    "track_video",
]
