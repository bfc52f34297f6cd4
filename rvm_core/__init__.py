"""rvm_core: Recurrent Video Masked Autoencoders in PyTorch (model, checkpoints, training, eval)."""

from .checkpoint import CheckpointError, build_model, load_model, save_model
from .config import CONFIGS, RVMConfig, get_config
from .model import RVM

__all__ = [
    "CONFIGS",
    "RVM",
    "CheckpointError",
    "RVMConfig",
    "build_model",
    "get_config",
    "load_model",
    "save_model",
]
