"""``python -m benchmarks all --out DIR``: the suites behind the README's performance table ->
``DIR/performance.md`` + PNG plots.

Runs, in this order (streaming first, so its memory trace starts in a fresh process):
streaming cost vs length, model FLOPs utilisation, recurrent core vs attention aggregator,
peers (VideoMAE, V-JEPA 2, DINOv2), ONNX Runtime vs eager on one thread, the readouts (tracker +
propagation fps), and the ROS 2 node suite (as a subprocess, so its threads and environment are
its own). Every figure in the report is a ratio
or sits next to its same-run baseline; the report starts with the command, date and machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import aggregator, mfu, peers, runtime, streaming, tracker
from .common import child_env, command_line, machine_info, md_table, module_command

NODE_TIMEOUT_S = 1800
RUNTIME_TARGETS = {"default": 1.3, "S": 1.1}  # ORT / eager step: the targets of the README table


def _node_suite(quick: bool, threads: int) -> tuple[str, str]:
    """Run ``python -m benchmarks node`` in a subprocess -> (status, its stdout)."""
    args = ["node", "--threads", str(threads), *(["--quick"] if quick else [])]
    shown = " ".join(["python -m benchmarks", *args])
    cmd = module_command("", *args)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, env=child_env()
        )
    except subprocess.TimeoutExpired:
        return "timed out", f"`{shown}` did not finish in {NODE_TIMEOUT_S} s."
    text = proc.stdout.strip()
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return f"failed (exit {proc.returncode})", f"{text}\n{tail}".strip()
    return "ok", text


def _default_size() -> str:
    s = peers.peer_size("default")
    return f"width {s['width']}, {s['layers']} layers, {s['heads']} heads, MLP {s['mlp']}"


def _summary(
    stream: list[dict], peer_rows: list[dict], mfu_res: dict | None, extra: list[list[Any]]
) -> str:
    """The headline claims with their targets, one row each."""
    rows: list[list[Any]] = []
    for r in stream:
        for backend, label in (("eager", "PyTorch"), ("ort", "ORT")):
            if backend not in r:
                continue
            s = r[backend]
            (e0, e1), (l0, l1) = s["early"], s["late"]
            rows.append(
                [
                    f"step time, frames {l0 + 1}-{l1} / {e0 + 1}-{e1} (side by side), "
                    f"RVM {r['model']} {label}",
                    f"{s['paired_ratio']:.3f}",
                    "within 5%",
                    "met" if s["time_ok"] else "missed",
                ]
            )
            rows.append(
                [
                    f"RSS growth, frames {e0 + 1}-{l1}, RVM {r['model']} {label}",
                    f"{s['growth_mb']:+.2f} MiB",
                    "<= 5 MB",
                    "met" if s["memory_ok"] else "missed",
                ]
            )
    for c in peers.checks(peer_rows):
        ok = "met" if c["ok"] else "missed"
        rows.append([f"{c['check']}, {c['size']} size", f"{c['value']:.2f}x", c["target"], ok])
    if mfu_res:
        for r in mfu_res["rows"]:
            rows.append(
                [
                    f"model FLOPs utilisation, RVM {r['model']} ORT",
                    f"{r['ort_mfu']:.0%}",
                    "(reported)",
                    "",
                ]
            )
    return md_table(["claim", "measured", "target", ""], rows + extra)


def add_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m benchmarks all``."""
    p.add_argument(
        "--out",
        default="runs/bench",
        help="directory for performance.md and the PNGs (default runs/bench; the committed "
        "report is docs/: --out docs)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads = ORT intra-op threads")
    p.add_argument(
        "--skip",
        default="",
        help="suites to leave out: streaming,mfu,aggregator,peers,runtime,tracker,node",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run on tiny settings (tests)")


@dataclass
class Report:
    """What the sections of one run add up to: markdown, plots and the summary's inputs."""

    out: Path
    quick: bool
    threads: int
    sections: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    stream: list[dict] = field(default_factory=list)
    peer_rows: list[dict] = field(default_factory=list)
    mfu: dict | None = None
    extra: list[list[Any]] = field(default_factory=list)  # summary rows: runtime, readouts


def _streaming(r: Report) -> None:
    """Streaming cost and memory vs video length, eager and ORT."""
    models, frames = (["default"], [24]) if r.quick else (["default", "S"], [1000, 200])
    print(f"[bench all] streaming: {models} x {frames} frames", flush=True)
    r.stream = streaming.measure(models, frames, r.threads, quick=r.quick)
    r.plots += streaming.plot(r.stream, r.out)
    r.sections.append(
        "## Streaming cost vs video length\n\n"
        "Every frame is one `RVM.step` (PyTorch eager: uint8 frame -> `to_model_input` -> "
        "step, under `torch.inference_mode`) or one `RVMRuntime.step` (ONNX Runtime CPU, the "
        "node's path), state carried over; the same 16 panned photo frames cycle. Random "
        "weights (cost does not depend on them). `default` = the shipped model's "
        "architecture at its native input; `S` at 256x256.\n\n"
        + streaming.markdown(r.stream)
        + "\n\n"
        + "\n".join(f"![streaming {s['model']}]({out_name(s)})" for s in r.stream)
    )


def _mfu(r: Report) -> None:
    """Model FLOPs utilisation against the GEMM peak of the same process."""
    print("[bench all] model FLOPs utilisation", flush=True)
    models = ["default"] if r.quick else ["default", "S"]
    r.mfu = mfu.measure(models, r.threads, *((3, 1) if r.quick else (20, 3)), quick=r.quick)
    r.plots += mfu.plot(r.mfu, r.out)
    r.sections.append(
        "## Model FLOPs utilisation (CPU)\n\n"
        "Analytic FLOPs of one step (`rvm_core.flops.step_flops`: encoder + core matmuls and "
        "attention products) / median step time, against the fp32 GEMM peak measured in the "
        "same process. Eager and ORT interleaved.\n\n" + mfu.markdown(r.mfu) + "\n\n"
        "![mfu](mfu.png)"
    )


def _aggregator(r: Report) -> None:
    """The recurrent core vs the self-attention aggregator (paper ablation)."""
    print("[bench all] aggregator ablation", flush=True)
    models = ["default"] if r.quick else ["default", "S"]
    windows = (1, 2) if r.quick else aggregator.WINDOWS
    rounds, frames = (1, 2) if r.quick else (3, 10)
    agg = aggregator.measure(models, windows, r.threads, rounds, frames, r.quick)
    r.plots += aggregator.plot(agg, r.out)
    r.sections.append(
        "## Recurrent core vs self-attention aggregator (paper ablation)\n\n"
        '`aggregator="attention"`: the current frame attends to itself and the previous K-1 '
        "encoded frames (MLPs widened to match the GRU core's parameters). History full; "
        "core alone on pre-encoded frames and full step; all variants interleaved.\n\n"
        + aggregator.markdown(agg)
        + "\n\n![aggregator](aggregator.png)"
    )


def _peers(r: Report) -> None:
    """Cost per new frame against windowed clip models and a per-frame image model."""
    print("[bench all] peers", flush=True)
    rounds, frames = (1, 1) if r.quick else (3, 5)
    r.peer_rows = peers.measure(["S", "default"], r.threads, rounds, frames, r.quick)
    r.plots += peers.plot(r.peer_rows, r.out)
    r.sections.append(
        "## Peers at equal width/depth (per new frame)\n\n"
        "Hugging Face `transformers` models from configs (random weights, no download): "
        "VideoMAE and V-JEPA 2 (encoder) re-encode the last 16 frames for every new frame "
        "(tubelet 2), DINOv2 encodes each frame. `S` = width 384, 12 layers, 6 heads, MLP "
        f"1536; `default` = the shipped model's encoder ({_default_size()}). Peers and "
        "`RVM` rows at 256x256, patch 16 (RVM-S; the shipped architecture with a linear "
        "16-px patch embedding); `RVM native` = the shipped model as deployed (its conv "
        "stem, native input size). Float frames in model layout; eval, "
        "`torch.inference_mode`, same threads, interleaved rounds, median.\n\n"
        + peers.markdown(r.peer_rows)
        + "\n\n![peers](peers.png)"
    )


def _runtime(r: Report) -> None:
    """ONNX Runtime vs PyTorch eager on one thread (per-op overhead vs kernels, no OpenMP
    barriers in the way)."""
    print("[bench all] runtime (ORT vs eager, 1 thread)", flush=True)
    sizes = ["default"] if r.quick else ["default", "S"]
    rows, _ = runtime.bench_runtime(
        sizes, frames=3 if r.quick else 10, rounds=2 if r.quick else 8, threads=1, quick=r.quick
    )
    r.sections.append(
        "## ONNX Runtime vs PyTorch eager, one thread "
        "(`python -m benchmarks runtime --threads 1`)\n\n"
        "The deployed `RVMRuntime.step` against `to_model_input` + `RVM.step` under "
        "`torch.inference_mode`, interleaved rounds, median ms per step; ratio = median (and "
        "range) over rounds of eager / ORT block medians; best = ratio of the fastest "
        "steps; wait = share of runnable time spent waiting for a core; `onnx` = the "
        "portable export, `ort` = the MultiHeadAttention contrib-op export.\n\n"
        f"```text\n{runtime.format_table(rows)}\n```"
    )
    for row in rows:
        lo, hi = row["speedup_range"]
        target = RUNTIME_TARGETS.get(row["model"].removesuffix("-quick"), 1.0)
        r.extra.append(
            [
                f"ORT / eager step, RVM {row['model']} ({row['attention']} export), 1 thread",
                f"{row['speedup']:.2f}x (rounds {lo:.2f}-{hi:.2f}x, best steps "
                f"{row['speedup_best']:.2f}x, wait {runtime.format_share(row['wait_share'])})",
                f">= {target:g}x",
                "met" if row["speedup"] >= target else "missed",
            ]
        )


def _tracker(r: Report) -> None:
    """The node's readouts (tracker + label propagation) alone and with the model step."""
    print("[bench all] tracker + propagation", flush=True)
    from rvm_ros.blas_threads import limit_blas_threads

    limit_blas_threads(1)  # as the node runs its readouts (benchmarks/tracker.py)
    hw = (96, 128) if r.quick else (480, 640)
    tracks = 4 if r.quick else 64
    fps = tracker.bench_tracker("default", hw, tracks, 2 if r.quick else 60)
    stages = ("step", "rvm", "hybrid", "lk", "propagation")
    r.sections.append(
        f"## Readouts (`python -m benchmarks tracker`): {hw[1]}x{hw[0]} frames, "
        f"{tracks} tracks, the shipped model (PyTorch step)\n\n"
        + md_table(
            ["stage", "fps", "ms / frame"],
            [[k, f"{v:.1f}", f"{1000 / v:.1f}"] for k, v in fps.items() if k.endswith(stages)],
        )
    )
    for method in ("rvm", "hybrid", "lk"):
        full = fps[f"full_{method}"]
        r.extra.append(
            [
                f"model + {method} tracker + propagation, {hw[1]}x{hw[0]}",
                f"{full:.1f} fps",
                ">= 15 fps",
                "met" if full >= 15 else "missed",
            ]
        )


def _node(r: Report) -> None:
    """The ROS 2 node suite, in its own process (its threads and environment are its own)."""
    print("[bench all] node", flush=True)
    status, text = _node_suite(r.quick, r.threads)
    r.sections.append(
        f"## ROS 2 node (`python -m benchmarks node`: {status})\n\n```text\n{text}\n```"
    )


# In this order: streaming first, so that its memory trace starts in a fresh process.
SECTIONS: dict[str, Callable[[Report], None]] = {
    "streaming": _streaming,
    "mfu": _mfu,
    "aggregator": _aggregator,
    "peers": _peers,
    "runtime": _runtime,
    "tracker": _tracker,
    "node": _node,
}


def _write(r: Report, info: dict[str, str], command: str, minutes: float) -> Path:
    """OUT/performance.md: the command, the machine, the summary, then every section."""
    info["load average (1 min, at end)"] = f"{os.getloadavg()[0]:.2f}"
    header = [
        "# Performance",
        "",
        "Generated by one command; every number below comes from this run. Timings are medians "
        "(or means where a target says so) of interleaved runs on a possibly shared machine; "
        "ratios are the figures to compare across machines.",
        "",
        f"```sh\n{command}\n```",
        "",
        md_table(
            ["", ""], [[k, v] for k, v in info.items()] + [["run time", f"{minutes:.1f} min"]]
        ),
        "",
    ]
    if r.stream or r.peer_rows or r.mfu or r.extra:
        header += ["## Summary", "", _summary(r.stream, r.peer_rows, r.mfu, r.extra), ""]
    report = r.out / "performance.md"
    report.write_text("\n".join(header) + "\n" + "\n\n".join(r.sections) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    """Run every section not skipped, then write the report and plots under ``--out``."""
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        raise ValueError(f"--skip: unknown suites {sorted(skip - set(SECTIONS))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = Report(out, args.quick, args.threads)
    info, command = machine_info(args.threads), command_line()
    start = time.perf_counter()
    for name, section in SECTIONS.items():
        if name not in skip:
            section(r)
    report = _write(r, info, command, (time.perf_counter() - start) / 60)
    print(report.read_text())
    names = ", ".join(p.name for p in r.plots)
    print(f"wrote {report} and {len(r.plots)} plots ({names})")
    return 0


def out_name(result: dict[str, Any]) -> str:
    """File name of a streaming plot (as written by :func:`streaming.plot`)."""
    return f"streaming_{result['model']}.png"
