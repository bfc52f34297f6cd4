"""What a run shows: progress bar / log lines, TensorBoard scalars, metrics.jsonl, loss.png and
reconstruction previews (target | masked input | reconstruction) as PNG. Rank 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

METRICS_FILE = "metrics.jsonl"


class Reporter:
    """Per-step reporting of the main rank (every method is a no-op on other ranks)."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        samples_per_step: int,
        log_every: int,
        enabled: bool,
        progress: bool = True,
    ) -> None:
        self.run_dir, self.total, self.enabled = run_dir, total_steps, enabled
        self.samples_per_step, self.log_every = samples_per_step, log_every
        self.start_step = start_step
        self.t_start = time.perf_counter()
        self.bar = self.tb = None
        self._metrics = None
        self._window: list[tuple[float, float, float]] = []  # (step s, data-wait s, loss)
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run logged after its last checkpoint
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
        self._metrics = open(run_dir / METRICS_FILE, "a")  # noqa: SIM115  (closed in close())
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(
        self, step: int, loss: float, lr: float, grad_norm: float, step_s: float, wait_s: float
    ) -> None:
        """Record optimizer step ``step`` (1-based count of completed steps)."""
        if not self.enabled:
            return
        rec = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        rec.update(step_s=round(step_s, 5), data_wait_s=round(wait_s, 5))
        self._metrics.write(json.dumps(rec) + "\n")
        self._window.append((step_s, wait_s, loss))
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every and step != self.total:
            return
        self._metrics.flush()
        steps_s = sum(w[0] for w in self._window)
        wait = sum(w[1] for w in self._window) / max(steps_s, 1e-9)
        sps = len(self._window) * self.samples_per_step / max(steps_s, 1e-9)
        mean_loss = sum(w[2] for w in self._window) / len(self._window)
        self._window.clear()
        for key, value in (
            ("train/loss", loss),
            ("train/loss_mean", mean_loss),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("perf/samples_per_s", sps),
            ("perf/data_wait_frac", wait),
        ):
            self.tb.add_scalar(key, value, step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}", wait=f"{wait:.0%}"
            )
        else:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.t_start
            eta = elapsed / max(done, 1) * (self.total - step)
            print(
                f"step {step}/{self.total} loss {mean_loss:.4f} lr {lr:.2e} "
                f"{sps:.1f} samples/s data-wait {wait:.0%} eta {_hms(eta)}",
                flush=True,
            )

    def scalar(self, key: str, value: float, step: int) -> None:
        if self.enabled:
            self.tb.add_scalar(key, value, step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def rewrite_metrics(self, loss: list[float], lr: list[float], grad_norm: list[float]) -> None:
        """Replace metrics.jsonl by the checkpoint's history (drops steps a killed run did after
        its last checkpoint, so the file is exactly one line per completed step)."""
        if not self.enabled:
            return
        self._metrics.close()
        path = self.run_dir / METRICS_FILE
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            for i, (lo, r, g) in enumerate(zip(loss, lr, grad_norm)):
                f.write(json.dumps({"step": i + 1, "loss": lo, "lr": r, "grad_norm": g}) + "\n")
        os.replace(tmp, path)
        self._metrics = open(path, "a")  # noqa: SIM115

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self._metrics.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run (one dict per completed optimizer step)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(path: Path, loss: list[float], lr: list[float], heldout: dict[int, float]) -> None:
    """Write the loss curve (raw, smoothed, held-out) and the learning rate as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = np.arange(1, len(loss) + 1)
    ax.plot(steps, loss, color="0.75", lw=0.8, label="train (per step)")
    if len(loss) >= 10:
        k = max(5, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="C0", lw=1.5, label=f"train ({k}-step mean)")
    if heldout:
        xs = sorted(heldout)
        ax.plot(xs, [heldout[x] for x in xs], "o-", color="C3", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("L2 loss")
    if loss and min(loss) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, lr, color="C2", lw=0.8, alpha=0.6)
    ax2.set_ylabel("learning rate", color="C2")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def preview_image(
    source: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    patch_size: int,
    frames: int = 2,
) -> np.ndarray:
    """A uint8 RGB grid: per sample and target frame, last source | target | masked input |
    reconstruction (visible patches pasted back). Inputs [B,T,3,H,W] in [0,1], mask [B,T,N]."""
    b, tt, _, h, w = target.shape
    p = patch_size
    gh, gw = h // p, w // p
    hidden = mask.reshape(b, tt, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)
    hidden = hidden[:, :, None].float().cpu()
    tgt, prd = target.float().cpu(), pred.float().cpu().clamp(0, 1)
    masked = tgt * (1 - hidden) + 0.5 * hidden  # hidden patches grey
    recon = tgt * (1 - hidden) + prd * hidden
    picks = sorted({0, tt - 1})[:frames] if frames < tt else range(tt)
    border = ((2, 2), (2, 2), (0, 0))  # white frame around every panel
    rows = []
    for i in range(b):
        for j in picks:
            panels = [source[i, -1].float().cpu(), tgt[i, j], masked[i, j], recon[i, j]]
            row = [np.pad(_hwc(x), border, constant_values=255) for x in panels]
            rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def save_png(path: Path, image: np.ndarray, scale: int = 1) -> None:
    """Write a uint8 [H,W,3] image (nearest-neighbour upscaled by ``scale``), atomically."""
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
