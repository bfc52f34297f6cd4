"""Random-weight ONNX exports cached on disk (tests, the node benchmark, ``rvm-ros demo``).

A cached file is keyed on every argument of the model build and of the export and on the
contents of the sources that shape the exported graph, so a code change re-exports. Importing
this module does not import PyTorch (only a cache miss does).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent


def export_sources() -> list[Path]:
    """The files whose contents affect a random-weight export (model, preprocessing, export)."""
    names = ["export.py", "preprocess.py", "config.py", "checkpoint.py"]
    return [PACKAGE / n for n in names] + sorted((PACKAGE / "model").glob("*.py"))


def sources_digest() -> str:
    """sha256 over the names and contents of :func:`export_sources`."""
    h = hashlib.sha256()
    for path in export_sources():
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def export_key(
    config: str, seed: int, model_args: dict[str, Any], export_args: dict[str, Any]
) -> str:
    """Hex key of one export: build arguments, export arguments and :func:`sources_digest`."""
    spec = {
        "config": config,
        "seed": seed,
        "model": model_args,
        "export": export_args,
        "sources": sources_digest(),
    }
    text = json.dumps(
        spec, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple) else str(v)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_export(
    cache: str | os.PathLike,
    stem: str,
    config: str = "tiny",
    seed: int = 0,
    model_args: dict[str, Any] | None = None,
    **export_args: Any,
) -> Path:
    """``export_onnx(build_model(config, seed, **model_args), ..., **export_args)``, cached.

    The file is ``cache/<stem>_<key>.onnx``; concurrent callers (pytest-xdist, parallel runs)
    export once, under a lock (``export_onnx`` writes atomically).
    """
    model_args = dict(model_args or {})
    cache = Path(cache)
    out = cache / f"{stem}_{export_key(config, seed, model_args, export_args)}.onnx"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            from .checkpoint import build_model
            from .export import export_onnx

            export_onnx(build_model(config, seed=seed, **model_args), out, **export_args)
    return out
