"""Export mode: process-wide flags the model's modules read while being traced to ONNX.

Eager code never sets them, so every module runs its plain path; ``rvm_core.export`` sets them
around ``torch.onnx.export`` with :func:`exporting`. Reading a flag is one global lookup, so the
eager step pays nothing measurable for the export branches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_exporting = False
_contrib_attention = False


def is_exporting() -> bool:
    """True while a graph is being traced for export (inside :func:`exporting`)."""
    return _exporting


def use_contrib_attention() -> bool:
    """True when unmasked attention is to be exported as ``com.microsoft.MultiHeadAttention``."""
    return _contrib_attention


@contextlib.contextmanager
def exporting(contrib_attention: bool = False) -> Iterator[None]:
    """Set the export flags for the duration of a trace; the previous values come back after."""
    global _exporting, _contrib_attention
    saved = _exporting, _contrib_attention
    _exporting, _contrib_attention = True, contrib_attention
    try:
        yield
    finally:
        _exporting, _contrib_attention = saved
