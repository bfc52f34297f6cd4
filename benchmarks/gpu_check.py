"""``python -m benchmarks gpu-check`` / ``make gpu-check``: the GPU paths checked once, one table
out.

Rows, each run on the ``--device`` GPU (default the first) or skipped with the reason:

* torch CUDA vs CPU parity of RVM-S streamed over a few frames: fp32 with TF32 off (max |diff|
  <= 1e-4) and bf16 autocast (max |diff| <= 5% of the largest |feature|: bf16 keeps 8
  mantissa bits, ~0.4% per rounding, over ~30 layers and a recurrent state);
* RVM-S training steps in bf16 (4+4 frames at 256x256, synthetic batch) on one GPU: plain, DDP
  and FSDP2 on a one-rank NCCL group; samples/s and MFU against a bf16 GEMM peak measured in
  the same run;
* step latency of S and B at 256x256, eager and replayed as a CUDA graph (the replay must give
  the eager result);
* where onnxruntime-gpu's CUDA EP loads: the exported S step through ``RVMRuntime`` on the CUDA
  EP with and without CUDA graphs (TF32 off: <= 1e-4 against PyTorch on the CPU) and on the
  TensorRT EP when its libraries load (fp32 engine; TensorRT may choose TF32 kernels for fp32
  layers, so its bound is 1e-2).

Statuses: ``pass`` / ``FAIL`` (a bound was checked), ``ran`` (a measurement without a bound),
``skip`` (did not run; the last column says why). Exit status 1 if any row FAILs. Everything
is local: no network, random weights (speed and parity do not depend on them). Sized to
finish in under 8 minutes on one GPU, most of it the ONNX export of S on the CPU and the
TensorRT engine build.

The check is self-contained (this module imports nothing from the other benchmarks), and its
measurement functions take a ``device`` so that the CPU tests run the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

SIZE = (256, 256)  # the S/B training resolution
FP32_BOUND = 1e-4
BF16_REL_BOUND = 0.05
GRAPH_BOUND = 1e-5  # CUDA-graph replay vs eager: the same kernels
TRT_BOUND = 1e-2


@dataclasses.dataclass
class Row:
    """One line of the table."""

    check: str
    status: str  # pass | FAIL | ran | skip
    value: str = ""
    note: str = ""  # the bound, or why it was skipped / failed


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of a run (``quick``: fewer frames, steps and iterations, same models)."""

    frames: int = 4
    train_batch: int = 32
    train_steps: int = 10
    train_warmup: int = 3
    latency_iters: int = 50
    gemm_n: int = 8192

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run of the same checks."""
        return cls(frames=2, train_batch=8, train_steps=3, train_warmup=1, latency_iters=10)


# -- measurements (each takes a device, so the CPU tests run the same code) -------------------
@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions (cuDNN's is on by default) inside."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def random_model(name: str, device: Any, **overrides: Any) -> Any:
    """An RVM of a named config with random weights (seed 0), on ``device``, eval mode."""
    from rvm_core.checkpoint import build_model

    return build_model(name, seed=0, **overrides).to(device).eval()


def stream_features(model: Any, frames: Any, bf16: bool = False) -> list[Any]:
    """Features [1,1+N,D] (float32, on the CPU) of streaming ``frames`` [T,1,3,H,W] from zero."""
    import torch

    dev = next(model.parameters()).device
    out, state = [], None
    with torch.inference_mode():
        for frame in frames:
            ctx = torch.autocast(dev.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                features, state = model.step(frame.to(dev), state)
            out.append(features.float().cpu())
    return out


def parity(model_name: str, device: Any, frames: int, bf16: bool, **overrides: Any) -> tuple:
    """(max |diff|, max |reference|) of ``device`` against fp32 on the CPU over a stream."""
    import torch

    video = torch.rand(frames, 1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    ref = stream_features(random_model(model_name, "cpu", **overrides), video)
    with tf32(False):
        got = stream_features(random_model(model_name, device, **overrides), video, bf16)
    diff = max(float((g - r).abs().max()) for g, r in zip(got, ref))
    scale = max(float(r.abs().max()) for r in ref)
    return diff, scale


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def gemm_tflops(device: Any, n: int, dtype_name: str = "bfloat16", iters: int = 10) -> float:
    """Measured dense GEMM rate (TFLOP/s) of n x n matrices: the peak MFU is read against."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


@contextlib.contextmanager
def one_rank_group(backend: str, device: Any) -> Iterator[None]:
    """A one-rank process group (file rendezvous: no port, no network) for DDP/FSDP2."""
    import torch
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="rvm-gpu-check-") as tmp:
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(
            backend, init_method=f"file://{tmp}/pg", rank=0, world_size=1, **kwargs
        )
        try:
            yield
        finally:
            dist.destroy_process_group()


def _synthetic_batch(mc: Any, b: int, device: Any) -> dict[str, Any]:
    """A uint8 batch as the loader gives it (4 targets), on ``device``."""
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (3, *mc.image_size)
    batch = {
        "source": torch.randint(0, 256, (b, mc.num_source, *shape), generator=g).to(torch.uint8),
        "target": torch.randint(0, 256, (b, 4, *shape), generator=g).to(torch.uint8),
        "deltas": torch.full((b, 4), mc.num_source + 3),
    }
    return {k: v.to(device) for k, v in batch.items()}


def train_flops_per_sample(model_name: str, **overrides: Any) -> float:
    """Forward + backward FLOPs of one training sample, counted on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rvm_core.config import get_config
    from rvm_core.model import RVM
    from rvm_core.train.loop import forward_loss, sample_masks

    mc = get_config(model_name, **overrides)
    meta = torch.device("meta")
    with meta:
        model = RVM(mc)
    mask = sample_masks(0, 0, 0, 0, 2, 4, mc.grid[0] * mc.grid[1], mc.mask_ratio)
    with FlopCounterMode(display=False) as counter:
        loss, _ = forward_loss(
            model, _synthetic_batch(mc, 2, meta), mask, meta, None, mc.patch_size
        )
        loss.backward()
    return counter.get_total_flops() / 2


def train_throughput(
    model_name: str, strategy: str, device: Any, plan: Plan, **overrides: Any
) -> dict[str, float]:
    """bf16 training steps (fp32 on the CPU) on a resident synthetic batch: samples/s, ms."""
    import torch

    from rvm_core.checkpoint import build_model
    from rvm_core.train.config import OptimConfig
    from rvm_core.train.distributed import DistEnv, prepare_model
    from rvm_core.train.loop import forward_loss, sample_masks
    from rvm_core.train.optim import build_optimizer

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else None  # CPU: bf16 is emulated there
    model = build_model(model_name, seed=0, **overrides).to(dev)
    mc = model.config
    backend = None if strategy == "none" else ("nccl" if dev.type == "cuda" else "gloo")
    env = DistEnv(0, 1, 0, dev, backend)
    model = prepare_model(model, env, strategy, dtype, compile=False)
    optimizer = build_optimizer(model, OptimConfig())
    b, t = plan.train_batch, 4
    batch = _synthetic_batch(mc, b, dev)  # resident: the model's rate, not the bus's
    n = mc.grid[0] * mc.grid[1]

    def step(i: int) -> None:
        mask = sample_masks(0, 0, i, 0, b, t, n, mc.mask_ratio)
        loss, _ = forward_loss(model, batch, mask, dev, dtype, mc.patch_size)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(plan.train_warmup):  # the first also allocates the optimizer state
        step(i)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(plan.train_steps):
        step(100 + i)
    _sync(dev)
    step_s = (time.perf_counter() - t0) / plan.train_steps
    return {"samples_per_s": b / step_s, "step_ms": 1e3 * step_s}


def step_latency(
    model_name: str, device: Any, iters: int, cuda_graph: bool, **overrides: Any
) -> tuple[float, float]:
    """(median ms per streaming step of one 256x256 frame, max |replay - eager|).

    ``cuda_graph``: the step is captured once with static frame/state buffers and replayed;
    the second value compares one replay with the eager step on the same inputs (0 if eager).
    """
    import torch

    model = random_model(model_name, device, **overrides)
    frame = torch.rand(1, 3, *SIZE, device=device)
    times: list[float] = []
    with torch.inference_mode():
        _, state = model.step(frame)
        if not cuda_graph:
            for _ in range(iters + 3):
                _sync(device)
                t0 = time.perf_counter()
                _, state = model.step(frame, state)
                _sync(device)
                times.append(time.perf_counter() - t0)
            return 1e3 * statistics.median(times[3:]), 0.0
        static_state = state.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as capture requires
            for _ in range(3):
                model.step(frame, static_state)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out_features, out_state = model.step(frame, static_state)
        graph.replay()
        eager_features, _ = model.step(frame, static_state)
        _sync(device)
        diff = float((out_features - eager_features).abs().max())
        for _ in range(iters + 3):
            _sync(device)
            t0 = time.perf_counter()
            static_state.copy_(out_state)  # the recurrence: this step's state feeds the next
            graph.replay()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[3:]), diff


def export_step(path: str, model_name: str, **overrides: Any) -> str:
    """Export the streaming step of a random-weight model for 256x256 frames (fp32)."""
    from rvm_core.export import export_onnx

    model = random_model(model_name, "cpu", **overrides)
    return str(export_onnx(model, path, SIZE, model_size=SIZE).path)


def ort_step(
    onnx_path: str,
    model_name: str,
    device: str,
    frames: int,
    iters: int,
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The exported step through ``RVMRuntime``: setup used, max |diff| vs PyTorch CPU, ms.

    ``overrides``: the config overrides the file was exported with (the reference model);
    ``options`` go to ``RVMRuntime`` (``device_id``, ``cuda_graph``, ...).
    """
    import numpy as np
    import torch

    from rvm_core.preprocess import to_model_input
    from rvm_ros.runtime import RVMRuntime

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (frames, *SIZE, 3), dtype=np.uint8)
    x = torch.stack([to_model_input(torch.from_numpy(f)[None], SIZE) for f in video])
    reference = stream_features(random_model(model_name, "cpu", **(overrides or {})), x)
    with RVMRuntime(onnx_path, device=device, warmup=0, tf32=False, **options) as rt:
        ref = [f[0, 1:].T.reshape(-1, *rt.metadata.grid) for f in reference]
        got = [rt.step(f) for f in video]
        diff = max(float(np.abs(g.astype(np.float32) - r.numpy()).max()) for g, r in zip(got, ref))
        times = []
        for _ in range(iters + 3):
            t0 = time.perf_counter()
            rt.step(video[0])
            times.append(time.perf_counter() - t0)
        return {
            "device": rt.device,
            "cuda_graph": rt.cuda_graph,
            "attempts": rt.attempts,
            "diff": diff,
            "ms": 1e3 * statistics.median(times[3:]),
        }


# -- the table ----------------------------------------------------------------------------------
def _bounded(check: str, value: float, bound: float, fmt: str = "{:.2e}") -> Row:
    ok = value <= bound
    return Row(check, "pass" if ok else "FAIL", fmt.format(value), f"<= {fmt.format(bound)}")


def _guard(rows: list[Row], check: str, fn: Callable[[], list[Row]]) -> None:
    """Run one group of checks; an exception is that group's FAIL row, not the end."""
    try:
        rows.extend(fn())
    except Exception as exc:  # every check reports, whatever broke
        from rvm_ros.runtime import first_line

        last = traceback.extract_tb(exc.__traceback__)[-1]
        reason = first_line(exc)[:160]
        rows.append(Row(check, "FAIL", "", f"{type(exc).__name__}: {reason} ({last.name})"))


def torch_cuda_reason() -> str | None:
    """Why torch cannot run on a CUDA device here (None: it can)."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (see docs/runtime.md: GPU check)"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return None


def ort_cuda_reason() -> str | None:
    """Why onnxruntime's CUDA EP cannot load here (None: it can)."""
    from rvm_ros.runtime import provider_library_error

    return provider_library_error("cuda")


TORCH_ROWS = (
    "torch parity S fp32, TF32 off",
    "torch parity S bf16 autocast",
    "bf16 GEMM peak",
    "train S bf16 1 GPU",
    "train S bf16 DDP 1 rank",
    "train S bf16 FSDP2 1 rank",
    "latency S eager",
    "latency S CUDA graph",
    "latency B eager",
    "latency B CUDA graph",
)
ORT_ROWS = ("ORT CUDA EP + CUDA graphs, S", "ORT CUDA EP, no graphs, S", "ORT TensorRT EP fp32, S")


def run_checks(plan: Plan, device: str = "cuda") -> tuple[list[Row], list[str]]:
    """All checks on ``device`` -> (rows, header lines describing the machine)."""
    import onnxruntime as ort
    import torch

    header = [
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime {ort.__version__} "
        f"{ort.get_available_providers()}"
    ]
    rows: list[Row] = []
    reason = torch_cuda_reason()
    if reason is None:
        props = torch.cuda.get_device_properties(device)
        header.append(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB")
        _torch_rows(rows, plan, device)
    else:
        rows += [Row(name, "skip", "", reason) for name in TORCH_ROWS]
    ort_reason = ort_cuda_reason()
    if ort_reason is None and reason is not None and "CPU build" not in reason:
        ort_reason = reason  # the libraries load, but there is no device to run on
    if ort_reason is None:
        _ort_rows(rows, plan, torch.device(device).index or 0)
    else:
        rows += [Row(name, "skip", "", f"onnxruntime CUDA EP: {ort_reason}") for name in ORT_ROWS]
    return rows, header


def _torch_rows(rows: list[Row], plan: Plan, device: str) -> None:
    def fp32() -> list[Row]:
        diff, _ = parity("S", device, plan.frames, bf16=False)
        return [_bounded(TORCH_ROWS[0], diff, FP32_BOUND)]

    def bf16() -> list[Row]:
        diff, scale = parity("S", device, plan.frames, bf16=True)
        row = _bounded(TORCH_ROWS[1], diff / scale, BF16_REL_BOUND)
        row.note += f" of max |feature| ({scale:.2f}); max |diff| {diff:.2e}"
        return [row]

    _guard(rows, TORCH_ROWS[0], fp32)
    _guard(rows, TORCH_ROWS[1], bf16)
    peak: list[float] = []

    def gemm() -> list[Row]:
        peak.append(gemm_tflops(device, plan.gemm_n))
        return [Row(TORCH_ROWS[2], "ran", f"{peak[0]:.0f} TFLOP/s", f"{plan.gemm_n}^2 matmul")]

    _guard(rows, TORCH_ROWS[2], gemm)
    flops: list[float] = []
    for name, strategy in zip(TORCH_ROWS[3:6], ("none", "ddp", "fsdp")):

        def train(name: str = name, strategy: str = strategy) -> list[Row]:
            group = (
                contextlib.nullcontext() if strategy == "none" else one_rank_group("nccl", device)
            )
            if not flops:
                flops.append(train_flops_per_sample("S"))
            with group:
                r = train_throughput("S", strategy, device, plan)
            tflops = flops[0] * r["samples_per_s"] / 1e12
            mfu = f", MFU {tflops / peak[0]:.0%} of the GEMM peak" if peak else ""
            note = (
                f"batch {plan.train_batch}, {r['step_ms']:.0f} ms/step, {tflops:.0f} TFLOP/s{mfu}"
            )
            return [Row(name, "ran", f"{r['samples_per_s']:.0f} samples/s", note)]

        _guard(rows, name, train)
    for i, model in enumerate(("S", "B")):
        eager_name, graph_name = TORCH_ROWS[6 + 2 * i], TORCH_ROWS[7 + 2 * i]

        def eager(model: str = model, name: str = eager_name) -> list[Row]:
            ms, _ = step_latency(model, device, plan.latency_iters, cuda_graph=False)
            return [Row(name, "ran", f"{ms:.2f} ms", "median, 1 frame 256x256, fp32")]

        def graph(model: str = model, name: str = graph_name) -> list[Row]:
            ms, diff = step_latency(model, device, plan.latency_iters, cuda_graph=True)
            row = _bounded(name, diff, GRAPH_BOUND)
            row.value = f"{ms:.2f} ms"
            row.note = f"replay vs eager {diff:.1e} (<= {GRAPH_BOUND:.0e})"
            return [row]

        _guard(rows, eager_name, eager)
        _guard(rows, graph_name, graph)


def _ort_row(
    name: str, path: str, plan: Plan, device: str, graphs: bool, bound: float, **options: Any
) -> list[Row]:
    r = ort_step(path, "S", device, plan.frames, plan.latency_iters, **options)
    if r["device"] != device or r["cuda_graph"] != graphs:  # it fell back: say where and why
        why = "; ".join(f"{a.setup}: {a.reason}" for a in r["attempts"] if a.reason)
        return [Row(name, "FAIL", "", f"ran on {r['device']} (graphs {r['cuda_graph']}): {why}")]
    row = _bounded(name, r["diff"], bound)
    row.value = f"{r['ms']:.2f} ms"
    row.note = f"median step; vs PyTorch CPU {r['diff']:.1e} (<= {bound:.0e})"
    return [row]


def _ort_rows(rows: list[Row], plan: Plan, device_id: int) -> None:
    """The onnxruntime rows, on GPU ``device_id`` (the torch rows' device)."""
    from rvm_ros.runtime import provider_library_error

    with tempfile.TemporaryDirectory(prefix="rvm-gpu-check-") as tmp:
        path = os.path.join(tmp, "s.onnx")

        def export() -> list[Row]:
            export_step(path, "S")
            return []

        _guard(rows, "ONNX export S 256x256", export)
        if not os.path.isfile(path):
            rows += [Row(name, "skip", "", "the export failed (row above)") for name in ORT_ROWS]
            return
        cuda = ORT_ROWS[0], ORT_ROWS[1]
        on = dict(device_id=device_id)
        _guard(rows, cuda[0], lambda: _ort_row(cuda[0], path, plan, "cuda", True, FP32_BOUND, **on))
        _guard(
            rows,
            cuda[1],
            lambda: _ort_row(
                cuda[1], path, plan, "cuda", False, FP32_BOUND, cuda_graph=False, **on
            ),
        )
        trt = ORT_ROWS[2]
        reason = provider_library_error("tensorrt")
        if reason is not None:
            rows.append(Row(trt, "skip", "", f"onnxruntime TensorRT EP: {reason}"))
            return
        engines = os.path.join(tmp, "trt")
        _guard(
            rows,
            trt,
            lambda: _ort_row(
                trt, path, plan, "tensorrt", False, TRT_BOUND, trt_cache_dir=engines, **on
            ),
        )


def format_table(rows: list[Row], header: list[str]) -> str:
    """The table as text (fixed-width columns)."""
    w = max(len(r.check) for r in rows)
    lines = [*header, "", f"{'check':<{w}}  {'status':<6}  {'value':<16}  bound / reason"]
    lines.append("-" * len(lines[-1]))
    lines += [f"{r.check:<{w}}  {r.status:<6}  {r.value:<16}  {r.note}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "ran", "skip")}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items())]
    return "\n".join(lines)


# -- command line: python -m benchmarks gpu-check / make gpu-check --------------------------------
def add_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m benchmarks gpu-check``."""
    p.add_argument("--quick", action="store_true", help="fewer frames, steps and iterations")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda, i.e. cuda:0)")


def run(args: argparse.Namespace) -> int:
    """Run every check, print the table; exit status 1 if a check FAILed."""
    if not args.device.startswith("cuda"):
        raise ValueError(f"--device must be a CUDA device (cuda, cuda:1, ...), got {args.device!r}")
    t0 = time.perf_counter()
    device = args.device
    if device == "cuda":  # DDP and the NCCL group want an indexed device
        device = "cuda:0"
    rows, header = run_checks(Plan.quick() if args.quick else Plan(), device)
    header.append(f"elapsed {time.perf_counter() - t0:.0f} s")
    print(format_table(rows, header))
    return 1 if any(r.status == "FAIL" for r in rows) else 0
