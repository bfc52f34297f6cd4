"""Pretraining: config, schedule, loss goes down, exact kill-and-resume, DDP/FSDP2 gradients,
skipped corrupt files, benchmark and (when torch_xla is installed) the XLA step.

Everything runs a shrunken model (width 32, one block each) on 32x32 frames on the CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rvm_core.checkpoint import build_model, load_model
from rvm_core.cli import main
from rvm_core.train.config import TrainConfig, load_config
from rvm_core.train.distributed import (
    DistEnv,
    exit_process,
    grad_sync,
    prepare_model,
    teardown,
    transformer_blocks,
    wrap_model,
)
from rvm_core.train.loop import forward_loss, sample_masks, train
from rvm_core.train.optim import lr_at
from rvm_core.train.report import read_metrics
from rvm_core.train.state import STATE_FILE, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = REPO / "data" / "real" / "imageio" / "realshort.mp4"  # fetched, gitignored

SMALL_MODEL = {
    "name": "tiny",
    "width": 32,
    "enc_layers": 1,
    "enc_heads": 2,
    "enc_mlp": 64,
    "core_layers": 1,
    "core_heads": 2,
    "core_mlp": 64,
    "dec_width": 32,
    "dec_layers": 1,
    "dec_heads": 2,
    "dec_mlp": 64,
    "patch_size": 4,
    "image_size": [32, 32],
    "posenc_grid": [8, 8],
    "num_deltas": 16,
    "mask_ratio": 0.75,
}


def blob_video(n: int, seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [n,h,w,3]: a smooth background with two bright squares moving at constant speed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1) * rng.uniform(60, 160, 3)
    frames = np.repeat(base[None], n, 0)
    for _ in range(2):
        y0, x0 = rng.uniform(0, h - 12), rng.uniform(0, w - 12)
        vy, vx = rng.uniform(-1, 1, 2)
        color = rng.uniform(150, 255, 3)
        for t in range(n):
            y, x = int(y0 + vy * t) % (h - 12), int(x0 + vx * t) % (w - 12)
            frames[t, y : y + 12, x : x + 12] = color
    return frames.astype(np.uint8)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(videos, cache): 3 train clips (+ the real short clip when fetched), a held-out clip and
    one corrupt file."""
    d = tmp_path_factory.mktemp("videos")
    for i in range(3):
        np.save(d / f"clip{i}.npy", blob_video(40, i))
    np.save(d / "held.npy", blob_video(40, 99))
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    if REAL_CLIP.is_file():
        shutil.copy(REAL_CLIP, d / REAL_CLIP.name)
    return d, tmp_path_factory.mktemp("cache")


def write_config(tmp: Path, data_dirs: tuple[Path, Path], **sections: dict) -> Path:
    """A YAML config for the small model; ``sections`` update model/data/optim/run."""
    import yaml

    videos, cache = data_dirs
    raw = {
        "model": dict(SMALL_MODEL),
        "data": {
            "paths": [str(videos)],
            "heldout": ["held*"],
            "cache_dir": str(cache),
            "short_side": 40,
            "clip_len": 24,
            "gap_min": 2,
            "gap_max": 8,
            "crop_scale": [0.5, 1.0],
            "num_workers": 0,
        },
        "optim": {"batch_size": 8, "batch_per_device": 8, "lr": 3e-3, "warmup_steps": 5},
        "run": {
            "name": "t",
            "out_dir": str(tmp / "runs"),
            "steps": 10,
            "threads": 1,
            "log_every": 5,
            "save_every": 100,
            "preview_every": 0,
            "progress": False,
        },
    }
    for key, value in sections.items():
        raw[key].update(value)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# -- config and schedule ----------------------------------------------------------------------
def test_config_yaml_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(REPO / "training/configs/tiny.yaml", ["optim.lr=1e-4", "run.steps=7"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float) and cfg.run.steps == 7
    assert cfg.model_config().name == "tiny"
    cfg = load_config(REPO / "training/configs/tiny.yaml", ["model.width=64", "data.paths=x"])
    assert cfg.model_config().width == 64 and cfg.data.paths == ["x"]
    assert cfg.optim.betas == (0.9, 0.95)  # YAML list -> tuple field
    for bad, msg in (
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optim.lr=fast", "optim.lr: expected float"),
        ("run.steps=1.5", "run.steps: expected int"),
        ("model.widht=3", "unknown config key 'model.widht'"),
        ("run.device=gpu", "run.device must be one of"),
        ("nonsense", "is not key=value"),
    ):
        with pytest.raises(ValueError, match=msg):
            load_config(REPO / "training/configs/tiny.yaml", [bad])
    # the saved (resolved) YAML loads back to the same config
    round_trip = tmp_path / "r.yaml"
    round_trip.write_text(cfg.to_yaml())
    assert load_config(round_trip).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("name", ["S", "B", "L", "H", "tiny"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / f"training/configs/{name}.yaml")
    if name != "tiny":  # the paper's recipe
        mc = cfg.model_config()
        assert mc.image_size == (256, 256) and mc.mask_ratio == 0.95 and mc.num_source == 4
        assert (cfg.data.num_target, cfg.data.gap_min, cfg.data.gap_max) == (4, 4, 48)
        assert cfg.optim.batch_size == 2048


def test_warmup_cosine_schedule() -> None:
    cfg = TrainConfig().optim
    cfg.lr, cfg.min_lr, cfg.warmup_steps = 1.0, 0.1, 10
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg, 110) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_masks_deterministic_per_step_and_rank() -> None:
    a = sample_masks(0, 0, 5, 0, 4, 4, 64, 0.75)
    assert torch.equal(a, sample_masks(0, 0, 5, 0, 4, 4, 64, 0.75))
    assert not torch.equal(a, sample_masks(0, 1, 5, 0, 4, 4, 64, 0.75))
    assert not torch.equal(a, sample_masks(0, 0, 6, 0, 4, 4, 64, 0.75))
    assert (~a).sum(-1).eq(16).all()  # 25% visible in every frame
    assert not torch.equal(a[0], a[1])  # per sample


# -- training ---------------------------------------------------------------------------------
def test_loss_decreases_skips_corrupt_and_writes_outputs(tmp_path: Path, data_dirs) -> None:
    path = write_config(
        tmp_path, data_dirs, run={"steps": 40, "save_every": 20, "preview_every": 20}
    )
    summary = train(load_config(path))
    loss = summary["loss"]
    assert len(loss) == 40 and all(np.isfinite(loss))
    assert np.mean(loss[-5:]) < 0.6 * np.mean(loss[:5]), loss
    assert summary["skipped"] == 1  # broken.mp4
    run = Path(summary["run_dir"])
    info = json.loads((run / "run_info.json").read_text())
    assert info["skipped"] == 1 and "broken.mp4" in next(iter(info["skipped_files"]))
    assert [r["loss"] for r in read_metrics(run)] == loss
    for step in (0, 20, 40):
        assert (run / f"previews/step_{step:08d}.png").stat().st_size > 1000, step
    assert (run / "loss.png").stat().st_size > 1000
    assert list((run / "tb").iterdir())
    heldout = summary["heldout"]
    assert set(heldout) == {0, 20, 40}  # step 0: the untrained baseline
    assert heldout[40] < heldout[0], heldout
    # the exported weights are a normal project checkpoint; the train state is plain safetensors
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "ckpt_00000040"
    model = load_model(run / "model.safetensors")
    assert model.config.width == 32
    with safe_open(str(ckpt / STATE_FILE), framework="pt") as f:
        assert f.metadata()["step"] == "40"
    # a new run into the same directory must not silently overwrite it
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(load_config(path))


def test_minutes_budget_sets_the_steps_and_crop_size_trains_smaller(
    tmp_path: Path, data_dirs
) -> None:
    """``run.minutes`` re-sets run.steps after the calibration steps so the cosine ends with the
    budget (recorded in the run's config); ``data.crop_size`` trains below the model's size."""
    import yaml

    budget = {"steps": 100000, "minutes": 0.1, "save_every": 100000}
    path = write_config(tmp_path, data_dirs, run=budget, data={"crop_size": [16, 24]})
    cfg = load_config(path)
    assert cfg.train_size == (16, 24) and cfg.train_grid == (4, 6)
    summary = train(cfg)
    steps = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())["run"]["steps"]
    assert 20 < steps < 100000 and summary["steps"] == steps == cfg.run.steps
    assert lr_at(steps - 1, cfg.optim, steps) < 0.05 * cfg.optim.lr  # the cosine ran out
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        load_config(path, ["data.crop_size=[18, 24]"])


def test_kill_and_resume_gives_the_same_losses(tmp_path: Path, data_dirs) -> None:
    """A SIGKILLed run resumed from its last checkpoint continues bit-for-bit like an
    uninterrupted one (data position with worker prefetch, optimizer, schedule, masks)."""
    steps = 14
    path = write_config(
        tmp_path,
        data_dirs,
        optim={"batch_size": 8, "batch_per_device": 4},  # 2 accumulated micro-batches
        data={"num_workers": 2},
        run={"steps": steps, "save_every": 4},
    )
    cmd = [sys.executable, "-m", "rvm_core.cli", "pretrain", "--config", str(path)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([*cmd, "run.name=full"], check=True, env=env, capture_output=True, cwd=REPO)
    full = [r["loss"] for r in read_metrics(tmp_path / "runs/full")]
    assert len(full) == steps

    run = tmp_path / "runs/killed"
    proc = subprocess.Popen([*cmd, "run.name=killed"], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(run) if run.exists() else None
        if ckpt is not None and ckpt.name == "ckpt_00000008":
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(run).name.split("_")[1])
    assert 8 <= killed_at < steps

    subprocess.run(
        [*cmd, "run.name=killed", "--resume"], check=True, env=env, cwd=REPO, capture_output=True
    )
    resumed = [r["loss"] for r in read_metrics(run)]
    assert len(resumed) == steps
    np.testing.assert_allclose(resumed, full, rtol=0, atol=1e-6)


# -- data parallel gradients ------------------------------------------------------------------
def test_init_file_and_frozen_stem(tmp_path: Path, data_dirs) -> None:
    model_cfg = {**SMALL_MODEL, "patch_size": 8, "stem": "mobilenetv2", "posenc_grid": [4, 4]}
    cfg = load_config(write_config(tmp_path, data_dirs, model=model_cfg))
    init = build_model(cfg.model_config())
    stem_init = tmp_path / "stem.safetensors"
    state = {
        k: v.clone() + 0.01
        for k, v in init.state_dict().items()
        if k.startswith("tokenizer.patch_embedding.stem.")
    }
    save_file(state, str(stem_init))
    path = write_config(
        tmp_path,
        data_dirs,
        model=model_cfg,
        optim={"freeze": ["tokenizer.patch_embedding.stem"]},
        run={"steps": 4, "init": str(stem_init)},
    )
    summary = train(load_config(path))
    assert all(np.isfinite(summary["loss"]))
    trained = load_model(Path(summary["run_dir"]) / "model.safetensors").state_dict()
    for k, v in state.items():
        assert torch.equal(trained[k], v), k  # initialised from the file, then never updated
    proj = "tokenizer.patch_embedding.proj.weight"
    assert not torch.equal(trained[proj], init.state_dict()[proj])
    bad = write_config(
        tmp_path, data_dirs, optim={"freeze": ["encoder.nothing"]}, run={"name": "other"}
    )
    with pytest.raises(ValueError, match="matches no parameter"):
        train(load_config(bad))


def _fixed_batch(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    batch = {
        "source": torch.randint(0, 256, (n, 4, 3, 32, 32), generator=g, dtype=torch.uint8),
        "target": torch.randint(0, 256, (n, 4, 3, 32, 32), generator=g, dtype=torch.uint8),
        "deltas": torch.randint(4, 12, (n, 4), generator=g),
    }
    return batch, sample_masks(0, 0, 0, 0, n, 4, 64, 0.75)


def _small_model() -> torch.nn.Module:
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in SMALL_MODEL.items()}
    return build_model(overrides.pop("name"), seed=0, **overrides)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        out[name.removeprefix("module.")] = g.detach().clone()
    return out


def _parallel_worker(rank: int, world: int, init_file: str, out_dir: str, strategy: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),  # a stuck collective fails instead of hanging
    )
    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    try:
        model = wrap_model(_small_model(), env, strategy)
        batch, mask = _fixed_batch(8)
        half = slice(4 * rank, 4 * rank + 4)
        # two micro-batches of 2 per rank; only the second one synchronises gradients
        for micro in range(2):
            part = slice(half.start + 2 * micro, half.start + 2 * micro + 2)
            mb = {k: v[part] for k, v in batch.items()}
            with grad_sync(model, strategy, micro == 1):
                loss, _ = forward_loss(model, mb, mask[part], env.device, None, 4)
                (loss / 2).backward()
        grads = _grads(model)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in grads.items()}, f"{out_dir}/{strategy}.st")
    finally:
        teardown(env)
    exit_process(0)  # as `rvm pretrain` ends a gloo rank (rank 1 exits right after an all-gather)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_gloo_matches_single_process(tmp_path: Path, strategy: str) -> None:
    """2 ranks x 2 accumulated micro-batches of 2 == one process on the whole batch of 8."""
    ctx = mp.spawn(
        _parallel_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), strategy),
        nprocs=2,
        join=False,
    )
    deadline = time.time() + 120
    while not ctx.join(timeout=1):  # raises if a worker fails or dies of a signal
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{strategy} workers did not finish in 120 s")
    model = _small_model()
    batch, mask = _fixed_batch(8)
    loss, _ = forward_loss(model, batch, mask, torch.device("cpu"), None, 4)
    loss.backward()
    single = _grads(model)
    parallel = load_file(str(tmp_path / f"{strategy}.st"))
    assert set(parallel) == set(single)
    for name, g in single.items():
        torch.testing.assert_close(parallel[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_torchrun_two_ranks_fsdp_end_to_end(tmp_path: Path, data_dirs) -> None:
    """`torchrun -m rvm_core.cli pretrain` with 2 gloo ranks (FSDP2): every rank exits 0 (no
    abort at interpreter shutdown), and the run's losses and final model are written."""
    path = write_config(
        tmp_path,
        data_dirs,
        optim={"batch_size": 8, "batch_per_device": 4},
        run={"steps": 3, "log_every": 1, "save_every": 3, "strategy": "fsdp", "name": "dist"},
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "rvm_core.cli", "pretrain", "--config", str(path)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs/dist")]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    model = load_model(tmp_path / "runs/dist/model.safetensors")  # gathered to full tensors
    assert model.config.width == SMALL_MODEL["width"]


def test_cache_only_builds_the_cache_as_its_own_step(tmp_path: Path, data_dirs, capsys) -> None:
    videos, _ = data_dirs
    cache = tmp_path / "cache"
    path = write_config(tmp_path, (videos, cache))
    assert main(["pretrain", "--config", str(path), "--cache-only"]) == 0
    out = capsys.readouterr().out
    assert f"cache {cache}:" in out and "1 skipped" in out  # the corrupt file
    assert len(list(cache.glob("*.npy"))) == len(list(videos.glob("*.npy"))) + REAL_CLIP.is_file()
    assert not (tmp_path / "runs").exists()  # no run was started
    (tmp_path / "other").mkdir()
    no_cache = write_config(tmp_path / "other", (videos, cache), data={"cache_dir": None})
    assert main(["pretrain", "--config", str(no_cache), "--cache-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs data.cache_dir" in err and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--config", str(path), f"data.paths=[{empty}]", "--cache-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no videos found" in err and "\n" not in err


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_compile_comes_after_wrapping(tmp_path: Path, strategy: str) -> None:
    """DDP is compiled as a whole (so dynamo sees its gradient buckets), FSDP2 per block; both
    after wrapping. Nothing is run: only where the compiled call sits is checked."""
    env = DistEnv(0, 1, 0, torch.device("cpu"), None if strategy == "none" else "gloo")
    if strategy != "none":
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1
        )
    try:
        model = prepare_model(_small_model(), env, strategy, torch.bfloat16, compile=True)
        if strategy == "none":
            assert _compiled(model)
        elif strategy == "ddp":
            assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
            assert _compiled(model) and not _compiled(model.module)
        else:
            from torch.distributed.fsdp import FSDPModule

            blocks = transformer_blocks(model)
            assert all(isinstance(b, FSDPModule) and _compiled(b) for b in blocks)
            assert not _compiled(model)
            # bf16 precision: bf16 all-gathered parameters, fp32 gradient reduction.
            for m in (model, *blocks):
                policy = m._get_fsdp_state()._mp_policy
                assert policy.param_dtype == torch.bfloat16
                assert policy.reduce_dtype == torch.float32
        uncompiled = prepare_model(_small_model(), env, strategy, None, compile=False)
        assert not any(_compiled(m) for m in uncompiled.modules())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_compile_is_refused_on_xla(tmp_path: Path, data_dirs) -> None:
    xla = DistEnv(0, 1, 0, torch.device("xla"))
    with pytest.raises(ValueError, match="not supported on XLA"):
        prepare_model(_small_model(), xla, "none", torch.bfloat16, compile=True)
    path = write_config(tmp_path, data_dirs, run={"device": "xla", "compile": True})
    with pytest.raises(ValueError, match="not supported on XLA"):
        load_config(path)


# -- benchmark and XLA ------------------------------------------------------------------------
def test_bench_train_reports_throughput_and_data_wait(tmp_path: Path, data_dirs) -> None:
    from benchmarks.train import bench_train

    cfg = load_config(write_config(tmp_path, data_dirs))
    result = bench_train(cfg, steps=4, warmup=1)
    assert result["measured_steps"] == 4
    assert result["samples_per_s"] > 0 and result["mean_step_s"] > 0
    assert 0.0 <= result["data_wait_frac"] < 1.0
    assert result["gflop_per_sample"] > 0


def test_xla_step(tmp_path: Path, data_dirs) -> None:
    pytest.importorskip("torch_xla", reason="torch_xla not installed (see training/README.md)")
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    path = write_config(tmp_path, data_dirs, run={"device": "xla", "steps": 3, "save_every": 3})
    summary = train(load_config(path))
    assert summary["steps"] == 3 and all(np.isfinite(summary["loss"]))


def test_xla_branch_reads_the_host_only_every_log_every_steps(
    tmp_path: Path, data_dirs, monkeypatch
) -> None:
    """The loop's XLA branch on the CPU (graph cut and device loader stubbed): loss and grad norm
    are read in batches at log/save/last steps, and the run equals the plain CPU run."""
    from rvm_core.train import loop

    run = {"steps": 7, "log_every": 3, "save_every": 5}
    ref = train(load_config(write_config(_mkdir(tmp_path / "cpu"), data_dirs, run=run)))
    cuts: list[int] = []
    reads: list[int] = []
    scalar = loop._scalar
    monkeypatch.setattr(DistEnv, "is_xla", property(lambda self: True))
    monkeypatch.setattr(loop, "mark_step", lambda env: cuts.append(1))
    monkeypatch.setattr(loop, "device_loader", lambda loader, env: loader)
    monkeypatch.setattr(loop, "_scalar", lambda x: reads.append(len(cuts)) or scalar(x))
    got = train(load_config(write_config(_mkdir(tmp_path / "xla"), data_dirs, run=run)))
    # One read per step, each made after the cut of the step it was batched at: 3 (log), 5
    # (save), 6 (log), 7 (last); never right after its own step's cut otherwise.
    assert reads == [3, 3, 3, 5, 5, 6, 7]
    assert got["steps"] == 7 and got["loss"] == ref["loss"]
    run_dir = Path(got["run_dir"])
    assert [r["loss"] for r in read_metrics(run_dir)] == ref["loss"]
    with safe_open(str(run_dir / "ckpt_00000005" / STATE_FILE), framework="pt") as f:
        assert f.metadata()["step"] == "5"  # saved after the read of steps 4 and 5


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
