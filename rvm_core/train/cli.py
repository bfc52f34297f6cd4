"""``rvm pretrain``: argument declaration and entry point (heavy imports happen inside)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig


def pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML, e.g. training/configs/tiny.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint (if any)"
    )
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="only decode data.paths into data.cache_dir, then exit (once per host, before "
        "a multi-rank run)",
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .distributed import resolve_device

    cfg = load_config(args.config, args.overrides)
    _setup_logging()
    if args.cache_only:
        return _build_cache(cfg)
    if resolve_device(cfg.run.device) == "xla":
        import torch_xla

        # one process per local XLA device (TPU chips; a single one with PJRT_DEVICE=CPU)
        torch_xla.launch(_xla_main, args=(cfg.to_yaml(), args.resume))
        return 0
    from .loop import train

    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"done: {summary['steps']} steps, last loss {summary['loss'][-1]:.4f}, run dir "
            f"{summary['run_dir']}"
        )
    if summary["backend"] == "gloo":
        from .distributed import exit_process

        exit_process(0)  # the run is saved; interpreter shutdown could abort (see there)
    return 0


def _build_cache(cfg: TrainConfig) -> int:
    from ..data.cache import build_cache

    if cfg.data.cache_dir is None:
        raise ValueError("--cache-only needs data.cache_dir (it is null in this config)")
    try:
        index = build_cache(
            cfg.data.paths,
            cfg.data.cache_dir,
            cfg.data.short_side,
            cfg.data.max_frames_per_video,
            num_workers=cfg.data.cache_workers,
        )
    except RuntimeError as exc:  # no videos, or none decodable: one line, no traceback
        raise ValueError(str(exc)) from None
    frames = sum(v.num_frames for v in index.videos)
    print(
        f"cache {index.cache_dir}: {len(index.videos)} videos, {frames} frames, "
        f"{len(index.skipped)} skipped"
    )
    return 0


def _xla_main(index: int, config_yaml: str, resume: bool) -> None:
    from .config import config_from_yaml_text
    from .loop import train

    _setup_logging()
    summary = train(config_from_yaml_text(config_yaml), resume=resume)
    if index == 0:
        print(f"done: {summary['steps']} steps, last loss {summary['loss'][-1]:.4f}")


def _setup_logging() -> None:
    main = int(os.environ.get("RANK", 0)) == 0
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
