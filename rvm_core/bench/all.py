"""``rvm bench all``: every issue-#8 suite in one run -> ``docs/performance.md`` + PNG plots.

Runs, in this order (streaming first, so its memory trace starts in a fresh process):
streaming cost vs length, model FLOPs utilisation, recurrent core vs attention aggregator,
peers (VideoMAE, V-JEPA 2, DINOv2), ONNX Runtime vs eager on one thread, the readouts (tracker +
propagation fps), and the ROS 2 node suite when one is registered (as a subprocess, so its
threads and environment are its own). Every figure in the report is a ratio
or sits next to its same-run baseline; the report starts with the command, date and machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import aggregator, mfu, peers, runtime, streaming, tracker
from .common import command_line, machine_info, md_table

NODE_TIMEOUT_S = 1800
RUNTIME_TARGETS = {"default": 1.3, "S": 1.1}  # ORT / eager step (issue #4)


def _node_suite(quick: bool, threads: int) -> tuple[str, str]:
    """Run ``rvm bench node`` in a subprocess -> (status, its stdout), or note its absence."""
    from . import SUITES

    if "node" not in SUITES:
        return "not registered", "`rvm bench node` is not registered in this checkout; skipped."
    import importlib

    suite = importlib.import_module(f".{SUITES['node'][1]}", __package__)
    probe = argparse.ArgumentParser()
    suite.add_args(probe)
    options = {o for a in probe._actions for o in a.option_strings}
    cmd = [sys.executable, "-m", "rvm_core.cli", "bench", "node"]
    if quick and "--quick" in options:
        cmd.append("--quick")
    if "--threads" in options:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timed out", f"`{' '.join(cmd[2:])}` did not finish in {NODE_TIMEOUT_S} s."
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
    p.add_argument(
        "--out",
        default=None,
        help="for performance.md and the PNGs (default docs; --quick: .build/bench-quick)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads = ORT intra-op threads")
    p.add_argument(
        "--skip",
        default="",
        help="suites to leave out: streaming,mfu,aggregator,peers,runtime,tracker,node",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run on tiny settings (tests)")


def run(args: argparse.Namespace) -> int:
    # A quick run never overwrites the committed report unless asked to.
    out = Path(args.out or (".build/bench-quick" if args.quick else "docs"))
    out.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    quick, threads = args.quick, args.threads
    info = machine_info(threads)
    command = command_line()
    start = time.perf_counter()
    sections: list[str] = []
    plots: list[Path] = []

    stream: list[dict] = []
    if "streaming" not in skip:
        models, frames = (["default"], [24]) if quick else (["default", "S"], [1000, 200])
        print(f"[bench all] streaming: {models} x {frames} frames", flush=True)
        stream = streaming.measure(models, frames, threads, quick=quick)
        plots += streaming.plot(stream, out)
        sections.append(
            "## Streaming cost vs video length\n\n"
            "Every frame is one `RVM.step` (PyTorch eager: uint8 frame -> `to_model_input` -> "
            "step, under `torch.inference_mode`) or one `RVMRuntime.step` (ONNX Runtime CPU, the "
            "node's path), state carried over; the same 16 panned photo frames cycle. Random "
            "weights (cost does not depend on them). `default` = the shipped model's "
            "architecture at its native input; `S` at 256x256.\n\n"
            + streaming.markdown(stream)
            + "\n\n"
            + "\n".join(f"![streaming {r['model']}]({out_name(r)})" for r in stream)
        )

    mfu_res = None
    if "mfu" not in skip:
        print("[bench all] model FLOPs utilisation", flush=True)
        models = ["default"] if quick else ["default", "S"]
        mfu_res = mfu.measure(models, threads, *((3, 1) if quick else (20, 3)), quick=quick)
        plots += mfu.plot(mfu_res, out)
        sections.append(
            "## Model FLOPs utilisation (CPU)\n\n"
            "Analytic FLOPs of one step (`rvm_core.flops.step_flops`: encoder + core matmuls and "
            "attention products) / median step time, against the fp32 GEMM peak measured in the "
            "same process. Eager and ORT interleaved.\n\n" + mfu.markdown(mfu_res) + "\n\n"
            "![mfu](mfu.png)"
        )

    if "aggregator" not in skip:
        print("[bench all] aggregator ablation", flush=True)
        models = ["default"] if quick else ["default", "S"]
        windows = (1, 2) if quick else aggregator.WINDOWS
        rounds, frames = (1, 2) if quick else (3, 10)
        agg = aggregator.measure(models, windows, threads, rounds, frames, quick)
        plots += aggregator.plot(agg, out)
        sections.append(
            "## Recurrent core vs self-attention aggregator (paper ablation)\n\n"
            '`aggregator="attention"`: the current frame attends to itself and the previous K-1 '
            "encoded frames (MLPs widened to match the GRU core's parameters). History full; "
            "core alone on pre-encoded frames and full step; all variants interleaved.\n\n"
            + aggregator.markdown(agg)
            + "\n\n![aggregator](aggregator.png)"
        )

    peer_rows: list[dict] = []
    if "peers" not in skip:
        print("[bench all] peers", flush=True)
        rounds, frames = (1, 1) if quick else (3, 5)
        peer_rows = peers.measure(["S", "default"], threads, rounds, frames, quick)
        plots += peers.plot(peer_rows, out)
        sections.append(
            "## Peers at equal width/depth (per new frame)\n\n"
            "Hugging Face `transformers` models from configs (random weights, no download): "
            "VideoMAE and V-JEPA 2 (encoder) re-encode the last 16 frames for every new frame "
            "(tubelet 2), DINOv2 encodes each frame. `S` = width 384, 12 layers, 6 heads, MLP "
            f"1536; `default` = the shipped model's encoder ({_default_size()}). Peers and "
            "`RVM` rows at 256x256, patch 16 (RVM-S; the shipped architecture with a linear "
            "16-px patch embedding); `RVM native` = the shipped model as deployed (its conv "
            "stem, native input size). Float frames in model layout; eval, "
            "`torch.inference_mode`, same threads, interleaved rounds, median.\n\n"
            + peers.markdown(peer_rows)
            + "\n\n![peers](peers.png)"
        )

    extra: list[list[Any]] = []
    if "runtime" not in skip:
        # One thread: the comparison of issue #4 (per-op overhead vs kernels, no OpenMP barriers).
        print("[bench all] runtime (ORT vs eager, 1 thread)", flush=True)
        sizes = ["default"] if quick else ["default", "S"]
        rt_rows, _ = runtime.bench_runtime(
            sizes, frames=3 if quick else 10, rounds=2 if quick else 8, threads=1, quick=quick
        )
        sections.append(
            "## ONNX Runtime vs PyTorch eager, one thread (`rvm bench runtime --threads 1`)\n\n"
            "The deployed `RVMRuntime.step` against `to_model_input` + `RVM.step` under "
            "`torch.inference_mode`, interleaved rounds, median ms per step; ratio = median (and "
            "range) over rounds of eager / ORT block medians; best = ratio of the fastest "
            "steps; wait = share of runnable time spent waiting for a core; `onnx` = the "
            "portable export, `ort` = the MultiHeadAttention contrib-op export.\n\n"
            f"```text\n{runtime.format_table(rt_rows)}\n```"
        )
        for r in rt_rows:
            lo, hi = r["speedup_range"]
            target = RUNTIME_TARGETS.get(r["model"].removesuffix("-quick"), 1.0)
            extra.append(
                [
                    f"ORT / eager step, RVM {r['model']} ({r['attention']} export), 1 thread",
                    f"{r['speedup']:.2f}x (rounds {lo:.2f}-{hi:.2f}x, best steps "
                    f"{r['speedup_best']:.2f}x, wait {runtime.format_share(r['wait_share'])})",
                    f">= {target:g}x",
                    "met" if r["speedup"] >= target else "missed",
                ]
            )

    if "tracker" not in skip:
        print("[bench all] tracker + propagation", flush=True)
        from rvm_ros.blas_threads import limit_blas_threads

        limit_blas_threads(1)  # as the node runs its readouts (rvm_core/bench/tracker.py)
        hw = (96, 128) if quick else (480, 640)
        tr = tracker.bench_tracker("default", hw, 4 if quick else 64, 2 if quick else 60)
        sections.append(
            f"## Readouts (`rvm bench tracker`): {hw[1]}x{hw[0]} frames, "
            f"{4 if quick else 64} tracks, the shipped model (PyTorch step)\n\n"
            + md_table(
                ["stage", "fps", "ms / frame"],
                [
                    [k, f"{v:.1f}", f"{1000 / v:.1f}"]
                    for k, v in tr.items()
                    if k.endswith(("step", "rvm", "hybrid", "lk", "propagation"))
                ],
            )
        )
        for method in ("rvm", "hybrid", "lk"):
            fps = tr[f"full_{method}"]
            extra.append(
                [
                    f"model + {method} tracker + propagation, {hw[1]}x{hw[0]}",
                    f"{fps:.1f} fps",
                    ">= 15 fps",
                    "met" if fps >= 15 else "missed",
                ]
            )

    if "node" not in skip:
        print("[bench all] node", flush=True)
        status, text = _node_suite(quick, threads)
        body = f"```text\n{text}\n```" if status != "not registered" else text
        sections.append(f"## ROS 2 node (`rvm bench node`: {status})\n\n{body}")

    minutes = (time.perf_counter() - start) / 60
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
    if stream or peer_rows or mfu_res or extra:
        header += ["## Summary", "", _summary(stream, peer_rows, mfu_res, extra), ""]
    report = out / "performance.md"
    report.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    print(report.read_text())
    print(f"wrote {report} and {len(plots)} plots ({', '.join(p.name for p in plots)})")
    return 0


def out_name(result: dict[str, Any]) -> str:
    """File name of a streaming plot (as written by :func:`streaming.plot`)."""
    return f"streaming_{result['model']}.png"
