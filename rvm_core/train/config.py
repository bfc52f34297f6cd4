"""Training configuration: one dataclass tree loaded from YAML plus dotted ``key=value`` overrides.

The YAML file is the only source of truth: every field has a default here, the file overrides
some, the command line overrides more, and the resolved result is saved into the run directory.
Values are type-checked against the dataclass annotations; unknown keys are a one-line error.
The ``model`` section names a registered model config (``rvm_core.config.CONFIGS``) plus
RVMConfig field overrides, e.g. ``model: {name: tiny, patch_size: 8}``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RVMConfig, get_config, parse_key_values
from ..data.splits import DEFAULT_HELDOUT


@dataclass
class DataConfig:
    """Videos, frame cache, clip sampling and augmentation (frame size: ``crop_size``)."""

    paths: list[str] = field(default_factory=lambda: ["data/real"])  # files or folders
    heldout: list[str] = field(default_factory=lambda: list(DEFAULT_HELDOUT))  # name patterns
    cache_dir: str | None = "data/cache"  # None = decode with PyAV in the workers (slow)
    short_side: int = 160  # cached frame short side, px
    max_frames_per_video: int | None = None
    clip_len: int = 64  # frames per clip window
    num_target: int = 4
    gap_min: int = 4  # target gap after the last source frame, frames
    gap_max: int = 48
    clip_stride: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)  # random-resized-crop area fraction
    # Training frame size (H, W); None = model.image_size. Smaller than the model's (running)
    # size trains more samples per CPU-second; positions and convs carry over to larger sizes.
    crop_size: tuple[int, int] | None = None
    hflip_p: float = 0.5
    num_workers: int = 2  # DataLoader workers per rank
    prefetch_factor: int = 4
    cache_workers: int = 0  # processes decoding videos into the cache (first run only)


@dataclass
class OptimConfig:
    """AdamW, linear warm-up then cosine decay, clipping, batch and accumulation."""

    batch_size: int = 16  # global samples per optimizer step
    batch_per_device: int = 16  # micro-batch; accumulation = batch_size / (this * world size)
    lr: float = 5e-4  # peak learning rate
    min_lr: float = 1e-5  # end of the cosine
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    weight_decay: float = 0.05  # not applied to biases, norms and tokens
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    loss_on: str = "hidden"  # hidden (the paper's L2 on masked patches) | all
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed


@dataclass
class RunConfig:
    """Where and how to run: devices, precision, sharding, hooks."""

    name: str = "tiny"  # run directory = out_dir/name
    out_dir: str = "runs"
    steps: int = 2000  # optimizer steps
    # > 0: this session's wall-clock budget in minutes. After the first steps run.steps is
    # re-set to what fits, so the cosine ends when the budget does (a fixed GPU lease).
    minutes: float = 0.0
    seed: int = 0
    init: str | None = None  # safetensors copied into the model at step 0 (`rvm stem-weights`)
    device: str = "auto"  # auto | cpu | cuda | xla
    precision: str = "auto"  # auto (bf16 on CUDA/XLA, fp32 on CPU) | fp32 | bf16
    strategy: str = "auto"  # auto (ddp, fsdp for L/H) | ddp | fsdp (only used if world > 1)
    compile: bool = False  # torch.compile the model (CUDA)
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    log_every: int = 10  # steps between TensorBoard / log lines
    save_every: int = 200  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # newest kept; older ones deleted
    preview_every: int = 200  # steps between held-out loss + reconstruction PNGs; 0 = off
    preview_samples: int = 4
    progress: bool = True  # tqdm bar on a terminal (plain log lines otherwise)
    dist_timeout_min: int = 60  # collective timeout (NCCL/gloo/XLA)
    # How long the other ranks wait for a host's first cache build (a gloo wait, not bound by
    # dist_timeout_min); or build it first with `rvm pretrain --cache-only`.
    cache_wait_min: int = 1440
    # Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace, no cuDNN
    # autotuning): for checking exact resume on a GPU; slower. CPU runs are deterministic.
    deterministic: bool = False


@dataclass
class TrainConfig:
    """Everything a pretraining run needs."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def model_config(self) -> RVMConfig:
        """The resolved model config: the named one with this section's overrides."""
        return resolve_model(self.model)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    @property
    def train_size(self) -> tuple[int, int]:
        """Training frame size (H, W): ``data.crop_size``, else the model's image size."""
        return tuple(self.data.crop_size or self.model_config().image_size)

    @property
    def train_grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of a training frame (what the target masks cover)."""
        p = self.model_config().patch_size
        return self.train_size[0] // p, self.train_size[1] // p

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides, type-checked."""
    cfg = TrainConfig()
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections")
        for key, value in _flatten(raw):
            set_value(cfg, key, value)
    for key, value in parse_key_values(overrides or []).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_yaml_text(text: str) -> TrainConfig:
    """A config from the resolved YAML saved in a run directory or checkpoint."""
    cfg = TrainConfig()
    for key, value in _flatten(yaml.safe_load(text) or {}):
        set_value(cfg, key, value)
    return cfg


def set_value(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set dotted ``key`` (``optim.lr``, ``model.width``) after checking/coercing its type."""
    section, _, name = key.partition(".")
    if section == "model":
        if not name:
            raise ValueError("model: set model.name or model.<RVMConfig field>")
        cfg.model = dict(cfg.model)
        cfg.model[name] = _model_value(name, value)
        return
    sections = {f.name for f in dataclasses.fields(cfg)}
    if section not in sections or not name:
        raise ValueError(f"unknown config key {key!r} (sections: {', '.join(sorted(sections))})")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        raise ValueError(
            f"unknown config key {key!r} (known in {section}: {', '.join(sorted(hints))})"
        )
    setattr(obj, name, coerce(value, hints[name], key))


def resolve_model(section: dict[str, Any]) -> RVMConfig:
    """``{name: tiny, width: 64, ...}`` -> RVMConfig."""
    overrides = {k: v for k, v in section.items() if k != "name"}
    return get_config(section.get("name", "tiny"), **overrides)


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks, each a one-line ValueError."""
    choices = {
        "run.device": (cfg.run.device, ("auto", "cpu", "cuda", "xla")),
        "run.precision": (cfg.run.precision, ("auto", "fp32", "bf16")),
        "run.strategy": (cfg.run.strategy, ("auto", "ddp", "fsdp")),
        "optim.schedule": (cfg.optim.schedule, ("cosine", "constant")),
        "optim.loss_on": (cfg.optim.loss_on, ("hidden", "all")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    mc = cfg.model_config()
    if not mc.has_decoder:
        raise ValueError(f"model {mc.name!r} has no decoder: cannot pretrain")
    max_delta = mc.num_source - 1 + cfg.data.gap_max
    if max_delta >= mc.num_deltas:
        raise ValueError(f"gap_max {cfg.data.gap_max} gives deltas >= num_deltas {mc.num_deltas}")
    h, w = cfg.train_size
    if h % mc.patch_size or w % mc.patch_size:
        raise ValueError(f"data.crop_size {h}x{w} is not a multiple of the patch {mc.patch_size}")
    grid = cfg.train_grid
    keep = int(grid[0] * grid[1] * (1.0 - mc.mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio {mc.mask_ratio} leaves no visible patch of {grid}")
    if cfg.optim.batch_size % cfg.optim.batch_per_device:
        raise ValueError(
            f"optim.batch_size {cfg.optim.batch_size} is not a multiple of "
            f"optim.batch_per_device {cfg.optim.batch_per_device}"
        )
    if cfg.run.compile and cfg.run.device == "xla":
        raise ValueError("run.compile=true is not supported on XLA (XLA compiles each step)")
    if cfg.run.minutes < 0:
        raise ValueError(f"run.minutes must be >= 0, got {cfg.run.minutes}")
    if cfg.run.steps < 1 or cfg.run.save_every < 1 or cfg.run.log_every < 1:
        raise ValueError("run.steps, run.save_every and run.log_every must be >= 1")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, X | None, tuple[...], list[X])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list of {len(args)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Any:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ValueError(f"{key}: expected {name}, got {value!r}")


def _model_value(name: str, value: Any) -> Any:
    if name == "name":
        return coerce(value, str, "model.name")
    hints = typing.get_type_hints(RVMConfig)
    if name not in hints:
        raise ValueError(
            f"unknown config key 'model.{name}' (RVMConfig fields: {', '.join(sorted(hints))})"
        )
    return coerce(value, hints[name], f"model.{name}")


def _flatten(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in raw.items():
        full = f"{prefix}{key}"
        # sections are nested mappings; a mapping inside a section is a value (none exist yet)
        if isinstance(value, dict) and "." not in full:
            out.extend(_flatten(value, f"{full}."))
        elif "." not in full:
            raise ValueError(f"config section {full!r} must be a mapping")
        else:
            out.append((full, value))
    return out


def _plain(obj: Any) -> Any:
    # yaml.safe_dump cannot write tuples: lists read back into the same tuple fields
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
