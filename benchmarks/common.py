"""Helpers shared by the suites: timing, memory, test frames, tables and machine info.

Not a suite itself (it is not in ``SUITES``). Heavy imports stay inside functions, as in every
module of this package.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The checkout this folder lives in: child processes import ``benchmarks`` from it, and model
# exports are cached in its (git-ignored) build folder.
CHECKOUT = Path(__file__).resolve().parent.parent
CACHE = CHECKOUT / ".build" / "bench-models"

# A seconds-long RVM for tests (--quick); same shape of work, far smaller numbers.
QUICK_CONFIG: dict[str, Any] = dict(
    width=32, enc_layers=2, enc_heads=2, enc_mlp=64, core_layers=1, core_heads=2, core_mlp=64
)


def build_rvm(name: str, quick: bool = False, **overrides: Any) -> Any:
    """An encoder+core RVM (random weights, eval) by bench name: ``default``, ``tiny``, ``S``...

    ``default`` is the shipped model's architecture (read from its checkpoint's metadata).
    """
    from rvm_core.checkpoint import DEFAULT_CHECKPOINT, build_model, read_config

    kw: dict[str, Any] = {"dec_layers": 0, **overrides}
    config: Any = read_config(DEFAULT_CHECKPOINT) if name == "default" else name
    if quick:
        kw = {**QUICK_CONFIG, **kw}
    return build_model(config, seed=0, **kw).eval()


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (from /proc/self/statm; no psutil)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak RSS is the best portable figure (KiB on Linux/BSD)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_frames(hw: tuple[int, int], n: int = 16) -> np.ndarray:
    """``n`` real-looking uint8 frames [n,H,W,3]: a photo panned 2 px per frame (no data needed)."""
    try:
        import cv2
        from skimage import data

        base = cv2.resize(data.astronaut(), (hw[1] + 2 * n + 8, hw[0] + n + 8))
        return np.stack([base[t // 2 : t // 2 + hw[0], 2 * t : 2 * t + hw[1]] for t in range(n)])
    except ImportError:  # deployment installs without scikit-image / OpenCV
        return np.random.default_rng(0).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def timed_rounds(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    frames: int,
    block_seconds: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Interleaved per-call seconds of each fn: ``rounds`` x (every fn, a block of calls each).

    Interleaving spreads the load of a shared machine over all contenders. A block is
    ``frames`` calls, fewer for slow fns (about ``block_seconds`` of work, at least one); its
    first call is discarded when the fn is fast, since it pays for the previous fn's threads.
    """
    est: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up: allocator, thread pools, lazy init; cost estimate
        fn()
        t = clock()
        fn()
        est[name] = clock() - t
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = max(1, min(frames, round(block_seconds / max(est[name], 1e-6))))
            if est[name] < 0.5:
                fn()
            for _ in range(n):
                t = clock()
                fn()
                times[name].append(clock() - t)
    return times


def sched_times() -> dict[int, tuple[int, int]]:
    """Per thread of this process: (on-CPU ns, runnable-but-waiting ns); {} without schedstat."""
    out = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            run, wait = (task / "schedstat").read_text().split()[:2]
        except (OSError, ValueError):  # the thread exited, or no schedstat
            continue
        out[int(task.name)] = (int(run), int(wait))
    return out


def wait_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Share of runnable time spent waiting for a core between two :func:`sched_times` reads.

    Only threads present in both reads count (one that exited took its counters with it);
    NaN when unknown (no schedstat).
    """
    run = wait = 0
    for tid, (r1, w1) in after.items():
        if tid in before:
            run, wait = run + r1 - before[tid][0], wait + w1 - before[tid][1]
    return wait / (run + wait) if run + wait > 0 else float("nan")


def round_medians(samples: Sequence[float], rounds: int) -> list[float]:
    """Median seconds of each round's block, from one fn's :func:`timed_rounds` samples."""
    n, extra = divmod(len(samples), rounds)
    if extra or not n:  # timed_rounds times the same number of calls per fn in every round
        raise ValueError(f"{len(samples)} samples do not split into {rounds} equal rounds")
    return [statistics.median(samples[i * n : (i + 1) * n]) for i in range(rounds)]


def paired_ratios(num: Sequence[float], den: Sequence[float], rounds: int) -> list[float]:
    """Per round, ``num``'s block median / ``den``'s block median (two fns of one
    :func:`timed_rounds` run): blocks of a round see the same load, so its changes cancel."""
    return [n / d for n, d in zip(round_medians(num, rounds), round_medians(den, rounds))]


def median_ms(samples: Sequence[float]) -> float:
    """Median of per-call seconds, in milliseconds."""
    return 1e3 * statistics.median(samples)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; floats get 3 significant digits unless already strings."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, load, library versions, git commit."""
    import onnxruntime
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"),
        "threads": str(threads),
        "load average (1 min, at start)": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = "not installed"
    try:
        root = CHECKOUT
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["git commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def command_line() -> str:
    """The running command as a user types it: ``python -m benchmarks`` + arguments."""
    import shlex

    return "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def module_command(module: str, *args: str) -> list[str]:
    """Command line of ``python -m benchmarks[.module] ARGS`` (run it with :func:`child_env`)."""
    return [sys.executable, "-m", f"{__package__}.{module}" if module else __package__, *args]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the checkout on PYTHONPATH, so that a child
    started from any directory imports this folder."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), out.get("PYTHONPATH")) if p)
    return out


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG (readable size) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
