"""The pretraining loop, top to bottom: setup, data, model, optimizer, resume, steps, hooks.

One optimizer step = ``accum`` micro-batches of ``batch_per_device`` samples on each of
``world_size`` ranks (= ``optim.batch_size`` samples). Data fetch time is measured separately
from compute so the data-wait fraction is known for every step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import build_model, count_parameters, init_from
from ..config import RVMConfig
from ..data import ClipSamplingConfig, CropConfig, VideoClipDataset, build_loader, split_heldout
from ..model.decoder import sample_mask, visible_indices
from ..model.rvm import reconstruction_loss
from .config import TrainConfig, config_from_yaml_text
from .distributed import (
    DistEnv,
    all_reduce_mean,
    autocast,
    autocast_dtype,
    barrier,
    device_loader,
    grad_sync,
    host_wait,
    mark_step,
    prepare_model,
    resolve_strategy,
    setup,
    teardown,
)
from .optim import build_optimizer, freeze_parameters, lr_at, set_lr
from .report import Reporter, plot_losses, preview_image, save_png
from .state import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

# Sections that must not change when a run is resumed (run.* may: more steps, other logging),
# except these keys, which do not change what is sampled (paths may move: a warning only).
_FROZEN_SECTIONS = ("model", "data", "optim")
_RESUME_FREE = ("data.num_workers", "data.prefetch_factor", "data.cache_workers", "data.cache_dir")
# Steps timed before a ``run.minutes`` budget sets run.steps (past compilation and warm-up).
_BUDGET_CALIBRATION_STEPS = 20
# Of the budget, the share kept for the last checkpoint, preview and exit.
_BUDGET_MARGIN = 0.03


def sample_masks(
    seed: int, rank: int, step: int, micro: int, batch: int, frames: int, patches: int, ratio: float
) -> torch.Tensor:
    """Per-sample target masks [B,Tt,N] bool (True = hidden), a pure function of
    (seed, rank, step, micro-batch): resuming needs no generator state."""
    key = np.random.SeedSequence([seed, rank, step, micro, 0x4D41534B]).generate_state(1, np.uint64)
    g = torch.Generator().manual_seed(int(key[0]) & (2**63 - 1))
    return sample_mask(batch, frames, patches, ratio, generator=g)


def forward_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    mask: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    patch_size: int,
    hidden_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (fp32 scalar) and prediction [B,Tt,3,H,W] for a uint8 batch from the loader.

    ``mask`` is a host tensor: its visible indices are computed here, before it moves, so the
    model never reads a device tensor back to the host.
    """
    nb = device.type == "cuda"
    visible = visible_indices(mask.cpu())
    # uint8 crosses the bus (4x less than float); convert on the device
    src = batch["source"].to(device, non_blocking=nb).float().div_(255.0)
    tgt = batch["target"].to(device, non_blocking=nb).float().div_(255.0)
    deltas = batch["deltas"].to(device, non_blocking=nb)
    mask = mask.to(device, non_blocking=nb)
    visible = visible.to(device, non_blocking=nb)
    with autocast(device, dtype):
        pred = model(src, tgt, deltas, mask, visible)
    return reconstruction_loss(pred, tgt, mask, patch_size, hidden_only), pred


def _scalar(x: torch.Tensor) -> float:
    # FSDP2 returns the global grad norm as a (replicated) DTensor
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


def train(cfg: TrainConfig, resume: bool = False, save: bool = True) -> dict[str, Any]:
    """Run (or continue, with ``resume``) the pretraining described by ``cfg``; returns a summary.

    ``save=False`` writes no checkpoints (benchmarks).
    """
    # -- setup: process group, device, threads, precision ------------------------------------
    env = setup(cfg.run.device, cfg.run.dist_timeout_min, cfg.run.cache_wait_min)
    try:
        with _deterministic_kernels(cfg.run.deterministic):
            return _train(cfg, env, resume, save)
    finally:
        teardown(env)


@contextlib.contextmanager
def _deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Deterministic GPU kernels inside (for an exact-resume check on CUDA); restored after."""
    if not enabled:
        yield
        return
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    # Before the first cuBLAS call, which reads the workspace setting once per process.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
        torch.backends.cudnn.benchmark = benchmark


def steps_in_budget(
    cfg: TrainConfig, env: DistEnv, done: int, start: int, t_loop: float, t_start: float
) -> int:
    """Total run.steps that end this session within ``run.minutes`` (the same on every rank).

    ``done - start`` steps took ``now - t_loop`` s; the session started at ``t_start``.
    """
    now = time.perf_counter()
    per_step = (now - t_loop) / max(1, done - start)
    left = cfg.run.minutes * 60 * (1 - _BUDGET_MARGIN) - (now - t_start)
    total = torch.tensor(float(done + max(1, int(left / per_step))), device=env.device)
    return int(all_reduce_mean(total, env))


def _set_threads(cfg: TrainConfig, env: DistEnv) -> None:
    """torch intra-op threads: ``run.threads``, or the host's cores split among its CPU ranks."""
    threads = cfg.run.threads
    if threads == 0 and env.world_size > 1 and env.device.type == "cpu":
        # several ranks on one CPU host: split the cores instead of oversubscribing them
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if threads > 0:
        torch.set_num_threads(threads)


def _grad_accum(cfg: TrainConfig, env: DistEnv) -> int:
    """Micro-batches per optimizer step: batch_size / (batch_per_device x world size)."""
    per_step = cfg.optim.batch_per_device * env.world_size
    if cfg.optim.batch_size % per_step:
        raise ValueError(
            f"optim.batch_size {cfg.optim.batch_size} is not a multiple of batch_per_device "
            f"{cfg.optim.batch_per_device} x {env.world_size} ranks"
        )
    return cfg.optim.batch_size // per_step


def _build_data(
    cfg: TrainConfig, env: DistEnv, mc: RVMConfig
) -> tuple[VideoClipDataset, VideoClipDataset | None, Any, list]:
    """(training set, held-out preview set or None, loader, held-out paths): the local rank 0
    of each host fills the frame cache, the others then reuse it."""
    train_paths, held_paths = split_heldout(cfg.data.paths, cfg.data.heldout)
    if not train_paths:
        raise ValueError(f"no training videos in {cfg.data.paths} (after the held-out split)")
    sampling = ClipSamplingConfig(
        clip_len=cfg.data.clip_len,
        num_source=mc.num_source,
        num_target=cfg.data.num_target,
        gap_min=cfg.data.gap_min,
        gap_max=cfg.data.gap_max,
        clip_stride=cfg.data.clip_stride,
    )
    crop = CropConfig(size=cfg.train_size, scale=cfg.data.crop_scale, hflip_p=cfg.data.hflip_p)

    def make_dataset(paths: list, crop: CropConfig, seed: int, rank: int, world: int):
        return VideoClipDataset(
            paths,
            sampling,
            crop,
            cache_dir=cfg.data.cache_dir,
            short_side=cfg.data.short_side,
            max_frames_per_video=cfg.data.max_frames_per_video,
            seed=seed,
            rank=rank,
            world_size=world,
            cache_workers=cfg.data.cache_workers,
        )

    def make_datasets() -> tuple[VideoClipDataset, VideoClipDataset | None]:
        ds = make_dataset(train_paths, crop, cfg.run.seed, env.rank, env.world_size)
        held = None
        if held_paths and cfg.run.preview_every > 0:
            # fixed full-frame views of held-out videos: the same samples at every preview
            view = CropConfig(size=cfg.train_size, scale=(1.0, 1.0), hflip_p=0.0)
            held = make_dataset(held_paths, view, cfg.run.seed + 1, 0, 1)
        return ds, held

    if env.local_rank == 0:
        dataset, held_ds = make_datasets()
    # The first build can take hours (`rvm pretrain --cache-only` runs it as its own step).
    host_wait(env, "rvm.cache")
    if env.local_rank != 0:
        dataset, held_ds = make_datasets()
    loader = build_loader(
        dataset,
        cfg.optim.batch_per_device,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=env.device.type == "cuda",
    )
    return dataset, held_ds, loader, held_paths


def _write_run_info(
    run_dir: Path,
    mc: RVMConfig,
    n_params: dict[str, int],
    env: DistEnv,
    about: dict[str, Any],
    dataset: VideoClipDataset,
    held_paths: list,
) -> None:
    """``run_info.json``: model, parameter counts, devices and the data actually read."""
    info = {
        "model": json.loads(mc.to_json()),
        "parameters": n_params,
        "world_size": env.world_size,
        "device": str(env.device),
        **about,
        "train_videos": len(dataset.videos),
        "train_frames": dataset.num_frames,
        "clip_windows": len(dataset.items),
        "skipped": dataset.num_skipped,
        "skipped_files": dataset.skipped,
        "heldout_videos": [str(p) for p in held_paths],
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=1))


def _train(cfg: TrainConfig, env: DistEnv, resume: bool, save: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    _set_threads(cfg, env)
    mc = cfg.model_config()
    strategy = resolve_strategy(cfg.run.strategy, mc.name, env)
    dtype = autocast_dtype(cfg.run.precision, env.device)
    accum = _grad_accum(cfg, env)
    run_dir = cfg.run_dir
    config_yaml = cfg.to_yaml()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if save and not resume and latest_checkpoint(run_dir) is not None:
            raise ValueError(f"{run_dir} already has checkpoints: pass --resume or a new run.name")
    barrier(env, "rvm.run_dir")

    dataset, held_ds, loader, held_paths = _build_data(cfg, env, mc)

    # -- model and optimizer ---------------------------------------------------------------
    model = build_model(mc, seed=cfg.run.seed)
    if cfg.run.init and (not resume or latest_checkpoint(run_dir) is None):
        init_from(model, cfg.run.init)  # a resumed run gets the weights from its checkpoint
    freeze_parameters(model, cfg.optim.freeze)
    n_params = count_parameters(model)
    model = model.to(env.device)
    model = prepare_model(model, env, strategy, dtype, cfg.run.compile)
    optimizer = build_optimizer(model, cfg.optim)

    # -- resume ----------------------------------------------------------------------------
    state = TrainState()
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state, saved_yaml = load_checkpoint(ckpt, model, optimizer)
        _check_resumable(config_from_yaml_text(saved_yaml), cfg)
        data_state = dict(state.data, rank=env.rank)
        loader.load_state_dict(data_state)
    if env.is_main:
        (run_dir / "config.yaml").write_text(config_yaml)
        about = {
            "strategy": strategy,
            "precision": str(dtype or torch.float32),
            "grad_accum": accum,
        }
        _write_run_info(run_dir, mc, n_params, env, about, dataset, held_paths)
    reporter = Reporter(
        run_dir,
        cfg.run.steps,
        state.step,
        cfg.optim.batch_size,
        cfg.run.log_every,
        enabled=env.is_main,
        progress=cfg.run.progress,
    )
    if ckpt is not None:
        reporter.rewrite_metrics(state.loss, state.lr, state.grad_norm)
        reporter.message(f"resumed from {ckpt} at step {state.step}")
    reporter.message(
        f"{mc.name}: {n_params['total'] / 1e6:.2f}M params, {len(dataset.videos)} videos "
        f"({dataset.num_skipped} skipped), {env.world_size} x {env.device.type} ({strategy}), "
        f"{cfg.optim.batch_size} samples/step = {env.world_size} ranks x {accum} x "
        f"{cfg.optim.batch_per_device}, precision {dtype or torch.float32}"
    )

    hidden_only = cfg.optim.loss_on == "hidden"
    preview = _preview_batch(held_ds, cfg, mc) if held_ds is not None else None

    def run_preview(step: int) -> None:
        # every rank runs the forward (FSDP needs all ranks); rank 0 writes the PNG
        batch, mask = preview
        model.eval()
        with torch.no_grad():
            loss, pred = forward_loss(
                model, batch, mask, env.device, dtype, mc.patch_size, hidden_only
            )
            loss_val = float(loss)
        model.train()
        state.heldout[step] = loss_val
        reporter.scalar("heldout/loss", loss_val, step)
        if env.is_main:
            src, tgt = batch["source"].float() / 255, batch["target"].float() / 255
            img = preview_image(src, tgt, mask, pred, mc.patch_size)
            save_png(run_dir / "previews" / f"step_{step:08d}.png", img, scale=2)

    if preview is not None and state.step == 0:
        # the untrained baseline that every later preview and held-out loss is read against
        run_preview(0)

    # -- loop ------------------------------------------------------------------------------
    num_patches = cfg.train_grid[0] * cfg.train_grid[1]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    model.train()
    # On XLA, MpDeviceLoader moves batches to the device in a background thread. It runs
    # ahead of the loop, so the data position is counted here from the batches consumed.
    data_iter = iter(device_loader(loader, env))
    data_pos = loader.next_index
    t_session, wait_session, steps_session = time.perf_counter(), 0.0, 0
    start_step, budget_due = state.step, cfg.run.minutes > 0

    def record(
        loss_t: torch.Tensor,
        gn_t: torch.Tensor,
        step: int,
        lr: float,
        t0: float,
        wait: float,
        data_state: dict[str, int],
        t1: float | None = None,
    ) -> None:
        # The step's only host reads (loss, grad norm). ``t1``: when the step's host work ended
        # (XLA, read later); None = now, after the reads, which wait for the device.
        nonlocal wait_session, steps_session
        loss_val, gn = float(loss_t), _scalar(gn_t)
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss is {loss_val} at step {step + 1}; lower optim.lr?")
        state.step = step + 1
        state.samples_seen += cfg.optim.batch_size
        state.loss.append(loss_val)
        state.lr.append(lr)
        state.grad_norm.append(gn)
        state.data = data_state
        wait_session += wait
        steps_session += 1
        step_s = (time.perf_counter() if t1 is None else t1) - t0
        reporter.step(state.step, loss_val, lr, gn, step_s, wait)

    # XLA: steps whose loss and grad norm are still device tensors, read every log_every steps.
    unread: list[tuple[Any, ...]] = []

    step = state.step
    while step < cfg.run.steps:
        lr = lr_at(step, cfg.optim, cfg.run.steps)
        set_lr(optimizer, lr)
        t0 = time.perf_counter()
        wait = 0.0
        total = torch.zeros((), device=env.device)
        for micro in range(accum):
            tw = time.perf_counter()
            batch = next(data_iter)
            data_pos += cfg.optim.batch_per_device
            wait += time.perf_counter() - tw
            mask = sample_masks(
                cfg.run.seed,
                env.rank,
                step,
                micro,
                cfg.optim.batch_per_device,
                cfg.data.num_target,
                num_patches,
                mc.mask_ratio,
            )
            with grad_sync(model, strategy, micro == accum - 1):
                loss, _ = forward_loss(
                    model, batch, mask, env.device, dtype, mc.patch_size, hidden_only
                )
                (loss / accum).backward()
            total += loss.detach()
            if accum > 1:
                mark_step(env)  # XLA: one graph per micro-batch, the same one every time
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = all_reduce_mean(total / accum, env)
        data_state = dict(loader.state_dict(), next_index=data_pos)

        done = step + 1  # the loop's own count: on XLA, state.step only moves at a host read
        if budget_due and done - start_step == _BUDGET_CALIBRATION_STEPS:
            budget_due = False
            cfg.run.steps = steps_in_budget(cfg, env, done, start_step, t_session, t_start)
            config_yaml = cfg.to_yaml()
            if env.is_main:
                (run_dir / "config.yaml").write_text(config_yaml)
            reporter.total = cfg.run.steps
            reporter.message(f"run.minutes={cfg.run.minutes:g}: run.steps set to {cfg.run.steps}")
        last = done == cfg.run.steps
        preview_due = preview is not None and (done % cfg.run.preview_every == 0 or last)
        save_due = save and (done % cfg.run.save_every == 0 or last)
        if env.is_xla:
            # torch_xla.sync() (torch_xla/torch_xla.py) launches the step's graph without waiting
            # and materialises every live tensor, so the kept loss and grad norm are device data:
            # reading them later runs no graph, it only waits for that step. Reading them now
            # (or in an xm.add_step_closure closure, which sync runs on this thread right after
            # the launch) would make the host wait for the device every step.
            mark_step(env)
            t1 = time.perf_counter()
            unread.append((mean_loss, grad_norm, step, lr, t0, wait, data_state, t1))
            if done % cfg.run.log_every == 0 or last or preview_due or save_due:
                for args in unread:
                    record(*args)
                unread.clear()
        else:
            record(mean_loss, grad_norm, step, lr, t0, wait, data_state)

        if preview_due:
            run_preview(done)
        if save_due:
            save_checkpoint(
                run_dir,
                model,
                optimizer,
                state,
                mc,
                config_yaml,
                env,
                keep=cfg.run.keep_checkpoints,
            )
            if env.is_main:
                plot_losses(run_dir / "loss.png", state.loss, state.lr, state.heldout)
        step = done
    elapsed = time.perf_counter() - t_session
    reporter.close()
    return {
        "run_dir": str(run_dir),
        "steps": state.step,
        "steps_this_session": steps_session,
        "loss": state.loss,
        "heldout": state.heldout,
        "skipped": dataset.num_skipped,
        "samples_per_s": steps_session * cfg.optim.batch_size / max(elapsed, 1e-9),
        "data_wait_frac": wait_session / max(elapsed, 1e-9),
        "world_size": env.world_size,
        "backend": env.backend,
        "strategy": strategy,
    }


def _preview_batch(
    held: VideoClipDataset, cfg: TrainConfig, mc: RVMConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The fixed held-out samples and masks used for every preview and held-out loss."""
    k = cfg.run.preview_samples
    samples = [held[i * max(1, len(held) // k)] for i in range(k)]
    batch = {key: torch.stack([s[key] for s in samples]) for key in ("source", "target", "deltas")}
    # step 2**31 - 1 never occurs in training: preview masks differ from every training mask
    n = cfg.train_grid[0] * cfg.train_grid[1]
    mask = sample_masks(cfg.run.seed, 0, 2**31 - 1, 0, k, cfg.data.num_target, n, mc.mask_ratio)
    return batch, mask


def _check_resumable(saved: TrainConfig, now: TrainConfig) -> None:
    a, b = saved.to_dict(), now.to_dict()
    changed = [
        f"{sec}.{k}"
        for sec in _FROZEN_SECTIONS
        for k in sorted(set(a[sec]) | set(b[sec]))
        if a[sec].get(k) != b[sec].get(k) and f"{sec}.{k}" not in _RESUME_FREE
    ]
    if "data.paths" in changed:
        changed.remove("data.paths")
        log.warning("data.paths changed: %s -> %s", a["data"]["paths"], b["data"]["paths"])
    if changed:
        raise ValueError(
            f"cannot resume: config changed since the checkpoint ({', '.join(changed)}); "
            "use a new run.name"
        )
    if saved.run.steps != now.run.steps:
        log.warning(
            "run.steps changed %d -> %d: the cosine schedule changes from here on",
            saved.run.steps,
            now.run.steps,
        )
