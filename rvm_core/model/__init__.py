"""The RVM model: encoder (vit), recurrent core (core), decoder, and the composed RVM (rvm)."""

from .decoder import sample_mask
from .rvm import RVM, patchify, reconstruction_loss, unpatchify

__all__ = ["RVM", "patchify", "reconstruction_loss", "sample_mask", "unpatchify"]
