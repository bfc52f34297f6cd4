"""Devices and data parallelism: single process, DDP, FSDP2 (``fully_shard``) and PyTorch/XLA.

Process groups come from the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): NCCL on CUDA, gloo on CPU. On XLA (TPU, or PJRT_DEVICE=CPU to test) the
ranks are the processes started by ``torch_xla.launch`` and the backend is ``xla``.

Waiting: ``ProcessGroupXla.barrier`` is a no-op, so every wait the code relies on (cache build,
checkpoint save) goes through :func:`barrier` / :func:`host_wait`, which use
``xm.rendezvous`` on XLA. The first-run cache build can take longer than the collective timeout,
so :func:`host_wait` waits on a separate gloo group with its own timeout instead of the NCCL
default group.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from ..model import RVM

# Model sizes large enough that replicating weights + AdamW state on every GPU is wasteful.
FSDP_MODELS = ("L", "H")


@dataclass
class DistEnv:
    """This process's place in the job and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None = no process group
    wait_group: object | None = None  # gloo group for long host-side waits (see host_wait)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_xla(self) -> bool:
        return self.device.type == "xla"


def resolve_device(name: str) -> str:
    """``auto`` -> cuda, else xla if PJRT_DEVICE is set and torch_xla imports, else cpu."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("PJRT_DEVICE") and xla_available():
        return "xla"
    return "cpu"


def xla_available() -> bool:
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


def setup(device: str = "auto", timeout_min: int = 60, wait_min: int = 1440) -> DistEnv:
    """Join the process group if launched with several ranks; pick this rank's device.

    ``timeout_min`` bounds every collective; ``wait_min`` bounds :func:`host_wait`.
    """
    kind = resolve_device(device)
    timeout = datetime.timedelta(minutes=timeout_min)
    if kind == "xla":
        import torch_xla
        import torch_xla.runtime as xr

        env = DistEnv(xr.global_ordinal(), xr.world_size(), xr.local_ordinal(), torch_xla.device())
        if env.world_size > 1 and not dist.is_initialized():
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)

            dist.init_process_group("xla", init_method="xla://", timeout=timeout)
            env.backend = "xla"
        return env
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("run.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    env = DistEnv(rank, world, local, dev)
    if world > 1:
        env.backend = "nccl" if kind == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if kind == "cuda" else {}
            dist.init_process_group(env.backend, timeout=timeout, **kwargs)
        # Every rank creates it, in the same order (new_group is collective).
        env.wait_group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(minutes=wait_min)
        )
    return env


def teardown(env: DistEnv) -> None:
    """Leave the process group (if this module created one)."""
    if env.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """End a gloo rank's process without interpreter shutdown, once its work is saved.

    gloo's worker threads outlive ``destroy_process_group`` and release a finished collective's
    tensors on their own; releasing a tensor Python also held needs the GIL, and a thread that
    asks for it during interpreter shutdown aborts the process (SIGABRT, "terminate called
    without an active exception": 3 of 39 two-rank test runs, and 1 of 39 with a barrier before
    teardown). Skipping the shutdown is the one exit that cannot race.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def resolve_strategy(strategy: str, model_name: str, env: DistEnv) -> str:
    """``none`` for one rank; ``auto`` = fsdp for L/H on CUDA, ddp otherwise."""
    if env.world_size == 1:
        return "none"
    if strategy == "auto":
        big = model_name in FSDP_MODELS and env.device.type == "cuda"
        return "fsdp" if big else "ddp"
    if strategy == "fsdp" and env.is_xla:
        raise ValueError("run.strategy=fsdp is not supported on XLA (use ddp)")
    return strategy


def wrap_model(
    model: RVM, env: DistEnv, strategy: str, dtype: torch.dtype | None = None
) -> nn.Module:
    """Wrap for data parallelism: DDP (all-reduced grads) or FSDP2 (sharded params/optimizer).

    With FSDP2 and a bf16 ``dtype`` the all-gathered parameters are bf16 and gradients are
    reduced in fp32 (``MixedPrecisionPolicy``); the sharded master weights stay fp32.
    """
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        if env.device.type == "cuda":
            return DDP(model, device_ids=[env.device.index])
        # XLA's DDP recipe: gradient buckets as views avoids an extra copy per step
        return DDP(model, gradient_as_bucket_view=env.is_xla)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Without a policy FSDP2 all-gathers fp32 parameters and autocast casts them per op:
        # twice the all-gather bytes of bf16 and a cast per use.
        mp = MixedPrecisionPolicy()
        if dtype is not None:
            mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        # Shard every transformer block separately so only one block's full weights are
        # materialised at a time, then the root (tokenizer, tokens, GRU gates, heads).
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


def compile_model(model: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """``torch.compile`` in place, after :func:`wrap_model`; refused on XLA.

    DDP is compiled as a whole so dynamo's DDPOptimizer splits the graph at the gradient
    buckets and the all-reduce overlaps the backward (compiling the inner module before
    wrapping hides the buckets from it). FSDP2 is compiled per block, so each block's
    all-gather and reduce-scatter hooks stay at block boundaries. In place, parameter names
    (and checkpoints) stay unchanged.
    """
    if env.is_xla:
        # PyTorch/XLA already traces and compiles the lazy graph of every step; dynamo on top
        # needs the openxla backend and is not part of this training path.
        raise ValueError("run.compile=true is not supported on XLA (XLA compiles each step)")
    if strategy == "fsdp":
        for block in transformer_blocks(model):
            block.compile()
    else:
        model.compile()
    return model


def prepare_model(
    model: RVM, env: DistEnv, strategy: str, dtype: torch.dtype | None, compile: bool
) -> nn.Module:
    """:func:`wrap_model`, then :func:`compile_model` if ``compile``: the order that works."""
    model = wrap_model(model, env, strategy, dtype)
    return compile_model(model, env, strategy) if compile else model


def transformer_blocks(model: RVM) -> list[nn.Module]:
    """The repeated blocks of encoder, core and decoder (the FSDP2 sharding units)."""
    blocks: list[nn.Module] = list(model.encoder.layers)
    blocks += list(model.core.transformer.xa_blocks)
    if model.decoder is not None:
        blocks += list(model.decoder.transformer.xa_blocks)
    return blocks


@contextlib.contextmanager
def grad_sync(model: nn.Module, strategy: str, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if strategy == "ddp" and not enabled:
        with model.no_sync():
            yield
    elif strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging: every rank sees the same number)."""
    if env.world_size == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def barrier(env: DistEnv, tag: str = "rvm.barrier") -> None:
    """Wait for every rank: ``xm.rendezvous`` on XLA (its process-group barrier is a no-op)."""
    if env.world_size <= 1:
        return
    if env.is_xla:
        import torch_xla.core.xla_model as xm

        xm.rendezvous(tag)
    elif dist.is_initialized():
        dist.barrier()


def host_wait(env: DistEnv, tag: str) -> None:
    """Wait for every rank on work that may outlast the collective timeout (the cache build)."""
    if env.world_size <= 1:
        return
    if env.is_xla or env.wait_group is None:
        barrier(env, tag)
    else:
        dist.barrier(group=env.wait_group)


def device_loader(loader: Iterable[Any], env: DistEnv) -> Iterable[Any]:
    """The loader as the device sees it: ``MpDeviceLoader`` on XLA (host-to-device transfers
    overlap the step in a background thread), the loader itself elsewhere."""
    if not env.is_xla:
        return loader
    import torch_xla.distributed.parallel_loader as pl

    return pl.MpDeviceLoader(loader, env.device)


def mark_step(env: DistEnv) -> None:
    """Cut the lazy XLA graph (one compiled graph per training step); no-op elsewhere."""
    if env.is_xla:
        import torch_xla

        torch_xla.sync()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware has bf16 units (CUDA, TPU), fp32 on CPU (bf16 there is ~200x
    slower on machines without AMX/AVX512-BF16)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type in ("cuda", "xla") else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype`` on ``device`` (no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
