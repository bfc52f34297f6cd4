"""``rvm train-readout``: train the online point-track readout over a checkpoint's frozen features.

One command per RVM checkpoint: renders the training clips if missing (both synthetic
generators, training-side clips and seeds only), caches the checkpoint's features, trains
(TAPIR-style losses: Huber on every position stage, BCE on visibility and on "error above
4 px" uncertainty), checkpoints every ``--save-every`` seconds and exports the ONNX step.

Exact resumption: each step's batch comes from a generator seeded by (seed, step) and the
learning rate is a function of the step, so weights + AdamW moments + step number are the whole
training state (``train_state.safetensors``, written atomically; torch's RNG is saved too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..readout.trained_checkpoint import load_readout, save_readout
from ..readout.trained_net import ReadoutConfig, ReadoutNet
from .readout_data import ClipSet, ClipSpec, cache_features, render_clips

STATE_FILE = "train_state.safetensors"
WEIGHTS_FILE = "readout.safetensors"
ONNX_FILE = "readout.onnx"
EVAL_SCALE = 256.0  # TAP-Vid metrics live in a 256x256 frame: losses use the same units


@dataclass(frozen=True)
class ReadoutTrainConfig:
    """Training recipe of the readout (stored in the training state)."""

    steps: int = 4000
    clips: int = 2  # clips per batch
    tracks: int = 64  # tracks per clip
    window: int = 12  # frames per training window (the first is the query frame)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    clip_grad: float = 1.0
    huber_delta: float = 1.0  # in 256-scale pixels
    unc_threshold: float = 4.0  # "uncertain" = final error above this (256-scale px)
    seed: int = 0


def lr_at(cfg: ReadoutTrainConfig, step: int) -> float:
    """Warm-up then cosine to 5% of the peak; a pure function of the step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def rollout_loss(
    net: ReadoutNet, batch: dict, cfg: ReadoutTrainConfig, device: str = "cpu"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the readout over a batch's windows from the query frame -> (loss, parts)."""
    gray = torch.from_numpy(batch["gray"]).to(device)
    feats = torch.from_numpy(batch["features"]).to(device)
    gt = torch.from_numpy(batch["tracks"]).to(device)
    occ = torch.from_numpy(batch["occluded"]).to(device)
    b, k, w = occ.shape
    hw = gray.shape[-2:]
    scale = torch.tensor([EVAL_SCALE / hw[1], EVAL_SCALE / hw[0]], device=device)
    state = net.new_state(gt[:, :, 0]).to(device)
    ones, zeros = torch.ones(b, k, device=device), torch.zeros(b, k, device=device)
    pos = vis_l = unc_l = torch.zeros((), device=device)
    n_stage = net.config.levels + 1
    stage_w = torch.tensor([0.2] * (n_stage - 1) + [1.0], device=device)
    err_sum, err_n = 0.0, 0
    for t in range(w):
        out = net.step(feats[:, t], gray[:, t], state, ones if t == 0 else zeros)
        state = out["state"]
        if t == 0:
            continue
        visible = ~occ[:, :, t]
        err = (out["stages"] - gt[:, :, t, None]) * scale  # [B,K,L,2]
        hub = F.huber_loss(err, torch.zeros_like(err), delta=cfg.huber_delta, reduction="none")
        hub = (hub.sum(-1) * stage_w).sum(-1)
        vf = visible.float()
        pos = pos + (hub * vf).sum() / vf.sum().clamp(min=1)
        vis_l = vis_l + F.binary_cross_entropy_with_logits(out["vis_logit"], vf)
        final = err[..., -1, :].norm(dim=-1).detach()
        unc_t = (final > cfg.unc_threshold).float()
        unc = F.binary_cross_entropy_with_logits(out["unc_logit"], unc_t, reduction="none")
        unc_l = unc_l + (unc * vf).sum() / vf.sum().clamp(min=1)
        err_sum += float((final * vf).sum())
        err_n += int(vf.sum())
    n = max(w - 1, 1)
    loss = (pos + vis_l + unc_l) / n
    parts = {
        "pos": pos.item() / n,
        "vis": vis_l.item() / n,
        "unc": unc_l.item() / n,
        "err256": err_sum / max(err_n, 1),
    }
    return loss, parts


# -- training state ------------------------------------------------------------------------------
def _save_state(path: Path, net, opt, step: int, history: list, cfg, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for key, v in st.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(v).contiguous().cpu()
    tensors["rng.torch"] = torch.random.get_rng_state()
    info = {
        "step": step,
        "history": history,
        "train_config": asdict(cfg),
        "param_groups": [
            {k: v for k, v in g.items() if k != "params"} for g in osd["param_groups"]
        ],
        "meta": meta,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"rvm_readout_train": json.dumps(info)})
    os.replace(tmp, path)


def _saved_config(path: Path) -> dict:
    """The training recipe stored in a run's state (resumed runs keep it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["rvm_readout_train"])["train_config"]


def _load_state(path: Path, net, opt) -> tuple[int, list]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["rvm_readout_train"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    osd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for g, saved in zip(osd["param_groups"], info["param_groups"]):
        g.update({k: v for k, v in saved.items() if k != "params"})
    osd["state"] = state
    opt.load_state_dict(osd)
    torch.random.set_rng_state(tensors["rng.torch"])
    return int(info["step"]), list(info["history"])


# -- the command -----------------------------------------------------------------------------
def train_readout_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rvm train-readout``."""
    p.add_argument("--checkpoint", default="default", help="RVM checkpoint (frozen features)")
    p.add_argument("--out", default=None, help="run folder (default runs/readout/<model id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"total steps (default {ReadoutTrainConfig.steps}; --resume: the run's own)",
    )
    p.add_argument("--size", default=None, help="model input HxW (default: the model's)")
    p.add_argument("--data", default="runs/readout_data", help="rendered training clips")
    p.add_argument("--num-clips", type=int, default=ClipSpec.num_clips)
    p.add_argument("--clip-frames", type=int, default=ClipSpec.num_frames)
    p.add_argument("--image-size", default="480x640", help="training clip frame HxW")
    p.add_argument("--root", default="data/real", help="folder of the training-side videos")
    p.add_argument("--workers", type=int, default=1, help="processes rendering clips")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) at this step")
    p.add_argument(
        "--time-limit", type=float, default=None, help="stop (checkpointed) after these seconds"
    )
    p.add_argument(
        "--train", nargs="*", metavar="KEY=VALUE", default=[], help="ReadoutTrainConfig overrides"
    )
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export at the end")
    p.add_argument(
        "--eval",
        default=None,
        metavar="SUITES",
        help="then score the exported readout on held-out suites, e.g. v1,v2 (+ stereo)",
    )
    p.add_argument("--random-baseline", action="store_true", help="--eval also on random weights")
    p.add_argument(
        "--ship",
        action="store_true",
        help="install the exported readout as the shipped default (rvm_core/weights)",
    )
    p.add_argument("--json", default=None, help="--eval results file")


def _overrides(items: list[str]) -> dict:
    out = {}
    fields = ReadoutTrainConfig.__dataclass_fields__
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise ValueError(f"unknown ReadoutTrainConfig key {key!r}; valid: {', '.join(fields)}")
        out[key] = type(getattr(ReadoutTrainConfig, key))(value)
    return out


def model_meta(checkpoint: str, model, size: tuple[int, int] | None) -> dict:
    """What a readout records about the RVM model whose features it reads."""
    from ..export import model_id

    size = tuple(size or model.config.image_size)
    return {
        "model_id": model_id(model),
        "model_checkpoint": str(checkpoint),
        "model_input_hw": list(size),
        "grid_hw": list(model.feature_grid(size)),
        "feature_dim": model.config.width,
    }


def cmd_train_readout(args: argparse.Namespace) -> int:
    """``rvm train-readout``: train (or resume) and export a readout for one checkpoint."""
    from ..eval.commands import _load
    from ..preprocess import parse_size

    torch.set_num_threads(args.threads)
    model = _load(args.checkpoint, args.device)
    size = parse_size(args.size) if args.size else None
    meta = model_meta(args.checkpoint, model, size)
    out = Path(args.out or f"runs/readout/{meta['model_id']}")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    if state_path.is_file() and not args.resume:
        raise ValueError(f"{state_path} exists: pass --resume to continue it, or another --out")
    saved = _saved_config(state_path) if args.resume and state_path.is_file() else {}
    steps = {} if args.steps is None else {"steps": args.steps}
    cfg = ReadoutTrainConfig(**{**saved, **steps, **_overrides(args.train)})
    spec = ClipSpec(args.num_clips, args.clip_frames, parse_size(args.image_size))
    t_data = time.perf_counter()
    clips = render_clips(args.data, spec, args.root, args.workers)
    t_feat = time.perf_counter()
    feats = cache_features(clips, model, meta["model_id"], size, args.device)
    print(
        f"data ready: clips {t_feat - t_data:.0f} s, features {time.perf_counter() - t_feat:.0f} s",
        flush=True,
    )
    del model
    data = ClipSet(clips, feats)

    torch.manual_seed(cfg.seed)
    net = ReadoutNet(ReadoutConfig(feature_dim=meta["feature_dim"])).to(args.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state_path.is_file():
        step, history = _load_state(state_path, net, opt)
        print(f"resumed {state_path} at step {step}")
    stop = min(cfg.steps, args.stop_after if args.stop_after is not None else cfg.steps)
    last_save = start = time.monotonic()
    t0 = time.perf_counter()
    while step < stop:
        if args.time_limit is not None and time.monotonic() - start > args.time_limit:
            print(f"time limit reached at step {step}: resume with --resume")
            break
        rng = np.random.default_rng([cfg.seed, step])
        batch = data.batch(rng, cfg.clips, cfg.tracks, cfg.window)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss, parts = rollout_loss(net, batch, cfg, args.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
        opt.step()
        step += 1
        history.append([loss.item(), parts["err256"]])
        if step % 20 == 0 or step == stop:
            rate = (time.perf_counter() - t0) / 20
            t0 = time.perf_counter()
            print(
                f"step {step}/{cfg.steps} loss {loss.item():.4f} pos {parts['pos']:.3f} "
                f"vis {parts['vis']:.3f} unc {parts['unc']:.3f} err256 {parts['err256']:.2f} "
                f"({rate:.2f} s/step)",
                flush=True,
            )
        if time.monotonic() - last_save > args.save_every or step == stop:
            _save_state(state_path, net, opt, step, history, cfg, meta)
            save_readout(net, out / WEIGHTS_FILE, dict(meta, step=step))
            last_save = time.monotonic()
    _save_state(state_path, net, opt, step, history, cfg, meta)
    save_readout(net, out / WEIGHTS_FILE, dict(meta, step=step))
    if not args.no_export:
        from ..readout.trained_export import export_readout

        net, meta2 = load_readout(out / WEIGHTS_FILE)
        export_readout(net.cpu(), meta2, out / ONNX_FILE, image_hw=spec.image_hw)
        print(f"wrote {out / ONNX_FILE}")
        if args.ship:
            import shutil

            from ..readout.trained_io import DEFAULT_READOUT

            shutil.copyfile(out / ONNX_FILE, DEFAULT_READOUT)
            shutil.copyfile(out / WEIGHTS_FILE, DEFAULT_READOUT.with_suffix(".safetensors"))
            print(f"installed as {DEFAULT_READOUT} (tracks.method: trained, readout: default)")
    print(f"readout run {out}: step {step}/{cfg.steps}")
    if args.eval:
        from .readout_eval import evaluate_readout, print_results

        suites = tuple(x.strip() for x in args.eval.split(",") if x.strip() != "stereo")
        results = evaluate_readout(
            str(out / ONNX_FILE),
            args.checkpoint,
            suites=suites,
            random_baseline=args.random_baseline,
            root=args.root,
            device=args.device,
        )
        print_results(results, args.json)
    return 0
