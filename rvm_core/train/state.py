"""Checkpoints for exact resumption, all safetensors (never pickle).

A checkpoint is a directory ``<run_dir>/ckpt_<step>/`` with
  model.safetensors        project format (``rvm_core.checkpoint.load_model`` reads it)
  train_state.safetensors  AdamW moments (``optim.<param>.<key>``), torch RNG, per-step history;
                           metadata: step, data-loader position, param groups, resolved config
It is written to a temp directory and renamed (atomic on POSIX), then ``<run_dir>/latest`` (the
name of the newest checkpoint) is replaced atomically and ``<run_dir>/model.safetensors`` is
re-linked to its model. A kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..checkpoint import CONFIG_KEY, FORMAT, FORMAT_KEY, CheckpointError
from ..config import RVMConfig
from .distributed import DistEnv, barrier

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
LATEST = "latest"
STATE_FORMAT = "rvm-train-state-v1"


@dataclass
class TrainState:
    """Progress besides weights and optimizer: step, data position and per-step history."""

    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # global samples consumed
    data: dict[str, int] = field(default_factory=dict)  # ClipLoader.state_dict() of rank 0
    loss: list[float] = field(default_factory=list)  # per step, mean over ranks
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    heldout: dict[int, float] = field(default_factory=dict)  # step -> held-out loss


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if pointer.is_file():
        ckpt = run_dir / pointer.read_text().strip()
        if (ckpt / STATE_FILE).is_file():
            return ckpt
    # pointer missing (killed between rename and pointer update): take the newest directory
    found = sorted(p for p in run_dir.glob("ckpt_*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    # Full (unsharded) CPU copies; with FSDP2 every rank must call this (it all-gathers).
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(
        model, optimizer, options=opts
    )


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    model_config: RVMConfig,
    config_yaml: str,
    env: DistEnv,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``ckpt_<step>`` atomically (all ranks call; rank 0 writes)."""
    run_dir = Path(run_dir)
    model_sd, optim_sd = _full_state(model, optimizer)
    final = run_dir / checkpoint_name(state.step)
    if env.is_main:
        tmp = run_dir / f".{final.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_sd.items()}
        meta = {CONFIG_KEY: model_config.to_json(), FORMAT_KEY: FORMAT}
        save_file(tensors, str(tmp / MODEL_FILE), metadata=meta)
        tensors, meta = _pack_train_state(optim_sd, state, config_yaml)
        save_file(tensors, str(tmp / STATE_FILE), metadata=meta)
        if final.exists():  # re-saving the same step (e.g. final step == a save step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write(run_dir / LATEST, final.name + "\n")
        link = run_dir / f".{MODEL_FILE}.tmp{os.getpid()}"
        link.unlink(missing_ok=True)
        os.link(final / MODEL_FILE, link)  # hard link: no second copy of the weights
        os.replace(link, run_dir / MODEL_FILE)
        _prune(run_dir, keep)
    barrier(env, "rvm.checkpoint")  # no rank reads or deletes it before rank 0 is done
    return final


def load_checkpoint(
    ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[TrainState, str]:
    """Restore weights and optimizer in place; returns (TrainState, saved config YAML)."""
    ckpt = Path(ckpt)
    try:
        with safe_open(str(ckpt / MODEL_FILE), framework="pt") as f:
            model_sd = {k: f.get_tensor(k) for k in f.keys()}
        with safe_open(str(ckpt / STATE_FILE), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{ckpt}: unreadable checkpoint ({exc})") from exc
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{ckpt}: not an rvm training checkpoint")
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    optim_sd = _unpack_optimizer(tensors, meta)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    hist = {k: tensors[f"history.{k}"].tolist() for k in ("loss", "lr", "grad_norm")}
    state = TrainState(
        step=int(meta["step"]),
        samples_seen=int(meta["samples_seen"]),
        data=json.loads(meta["data"]),
        heldout={int(k): v for k, v in json.loads(meta.get("heldout", "{}")).items()},
        **hist,
    )
    return state, meta["config"]


def _pack_train_state(
    optim_sd: dict[str, Any], state: TrainState, config_yaml: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, entries in optim_sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["history.loss"] = torch.tensor(state.loss, dtype=torch.float64)
    tensors["history.lr"] = torch.tensor(state.lr, dtype=torch.float64)
    tensors["history.grad_norm"] = torch.tensor(state.grad_norm, dtype=torch.float64)
    meta = {
        "format": STATE_FORMAT,
        "step": str(state.step),
        "samples_seen": str(state.samples_seen),
        "data": json.dumps(state.data),
        "heldout": json.dumps(state.heldout),
        "param_groups": json.dumps(optim_sd["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "config": config_yaml,
        "torch_version": torch.__version__,
    }
    return tensors, meta


def _unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, _, entry = key[len("optim.") :].rpartition(".")
            state.setdefault(name, {})[entry] = value
    for key, value in json.loads(meta.get("optim_scalars", "{}")).items():
        name, _, entry = key.rpartition(".")
        state.setdefault(name, {})[entry] = value
    groups = json.loads(meta["param_groups"])
    for g in groups:  # JSON has no tuples; AdamW expects a (beta1, beta2) pair
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(run_dir: Path, keep: int) -> None:
    for stale in run_dir.glob(".ckpt_*.tmp*"):  # left by a killed writer
        if not stale.name.endswith(f".tmp{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    if keep <= 0:
        return
    done = sorted(p for p in run_dir.glob("ckpt_*") if (p / STATE_FILE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
