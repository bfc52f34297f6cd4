"""``rvm pretrain``: argument declaration and entry point (heavy imports happen inside)."""

from __future__ import annotations

import argparse
import logging
import os


def pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML, e.g. training/configs/tiny.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint (if any)"
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .distributed import resolve_device

    cfg = load_config(args.config, args.overrides)
    _setup_logging()
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
