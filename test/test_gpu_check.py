"""``python -m benchmarks gpu-check``: on this CPU machine every GPU row is skipped with its reason
(never "pass"), and the measurement functions behind the rows run on the CPU with a small model."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.__main__ import main
from benchmarks.gpu_check import ORT_ROWS, TORCH_ROWS, Plan, Row
from rvm_ros import runtime as runtime_module

# A small model at the check's 256x256 input: the functions are the GPU check's, not copies.
SMALL = dict(
    width=32, enc_layers=1, enc_heads=2, enc_mlp=64, core_layers=1, core_heads=2, core_mlp=64
)
TRAIN = dict(SMALL, dec_width=32, dec_layers=1, dec_heads=2, dec_mlp=64, image_size=(64, 64))


def _table_rows(out: str) -> dict[str, tuple[str, str]]:
    """check -> (status, last column) from the printed table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("check ")) + 2
    w = lines[start - 2].index("status")
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        status, rest = line[w:].split(None, 1)
        rows[line[:w].strip()] = (status, rest.strip())
    return rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the rows would run")
def test_cpu_machine_prints_every_gpu_row_skipped_with_why(capsys) -> None:
    assert main(["gpu-check", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert set(rows) == set(TORCH_ROWS) | set(ORT_ROWS)
    for check, (status, reason) in rows.items():
        assert status == "skip", check
        assert len(reason) > 10, check  # the reason, e.g. "torch ... is a CPU build"
    assert "CPU build" in rows[TORCH_ROWS[0]][1] or "no CUDA device" in rows[TORCH_ROWS[0]][1]
    assert rows[ORT_ROWS[0]][1].startswith("onnxruntime CUDA EP: ")
    assert "0 pass, 0 FAIL, 0 ran" in out


def test_bad_device_is_one_line_error(capsys) -> None:
    assert main(["gpu-check", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("python -m benchmarks gpu-check: error: --device must be a CUDA device")
        and "\n" not in err
    )


def test_a_check_that_raises_is_a_fail_row_and_the_exit_status() -> None:
    rows: list[Row] = []
    gpu_check._guard(rows, "broken", lambda: [Row("x", "pass")][5])
    assert rows[0].check == "broken" and rows[0].status == "FAIL"
    assert rows[0].note.startswith("IndexError")
    assert gpu_check._bounded("b", 2e-4, 1e-4).status == "FAIL"
    assert gpu_check._bounded("b", 5e-5, 1e-4).status == "pass"
    assert "1 FAIL" in gpu_check.format_table(rows, [])


def test_parity_and_latency_functions_run_on_cpu() -> None:
    diff, scale = gpu_check.parity("tiny", "cpu", 2, bf16=False, **SMALL)
    assert diff == 0.0 and scale > 0  # the same device: bit-identical
    ms, replay = gpu_check.step_latency("tiny", "cpu", 2, cuda_graph=False, **SMALL)
    assert ms > 0 and replay == 0.0
    assert gpu_check.gemm_tflops("cpu", 64, "float32", iters=2) > 0


@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_train_throughput_runs_on_cpu(strategy: str) -> None:
    plan = Plan(train_batch=2, train_steps=1, train_warmup=1)
    if strategy == "none":
        r = gpu_check.train_throughput("tiny", strategy, "cpu", plan, **TRAIN)
    else:
        with gpu_check.one_rank_group("gloo", "cpu"):
            r = gpu_check.train_throughput("tiny", strategy, "cpu", plan, **TRAIN)
    assert r["samples_per_s"] > 0 and r["step_ms"] > 0
    assert not torch.distributed.is_initialized()


def test_train_flops_are_counted_without_compute() -> None:
    flops = gpu_check.train_flops_per_sample("S")  # on the meta device: instant for S
    assert 4e11 < flops < 8e11  # ~3 x 8 frames x 19 GFLOP + the decoder


def _runtime_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rvm-ort")}


def test_ort_step_runs_the_deployed_runtime(tmp_path: Path) -> None:
    before = _runtime_threads()
    path = gpu_check.export_step(str(tmp_path / "t.onnx"), "tiny", **SMALL)
    r = gpu_check.ort_step(path, "tiny", "cpu", 2, 2, overrides=SMALL, threads=1)
    assert r["device"] == "cpu" and r["cuda_graph"] is False
    assert r["diff"] <= gpu_check.FP32_BOUND and r["ms"] > 0
    # The runtime is closed, also when the measurement raises (no timed steps: no median).
    with pytest.raises(statistics.StatisticsError):
        gpu_check.ort_step(path, "tiny", "cpu", 2, 0, overrides=SMALL, threads=1)
    assert _runtime_threads() == before


def test_ort_rows_run_on_the_torch_rows_gpu(monkeypatch) -> None:
    calls: list[tuple[str, dict]] = []

    def ort_step(path: str, model: str, device: str, *args: object, **options: object) -> dict:
        calls.append((device, options))
        graphs = device == "cuda" and options.get("cuda_graph", True)
        return dict(device=device, cuda_graph=graphs, attempts=[], diff=0.0, ms=1.0)

    monkeypatch.setattr(gpu_check, "torch_cuda_reason", lambda: "torch 0 is a CPU build")
    monkeypatch.setattr(gpu_check, "ort_cuda_reason", lambda: None)
    monkeypatch.setattr(runtime_module, "provider_library_error", lambda name: None)
    monkeypatch.setattr(gpu_check, "export_step", lambda path, name: Path(path).touch())
    monkeypatch.setattr(gpu_check, "ort_step", ort_step)
    rows, _ = gpu_check.run_checks(Plan.quick(), "cuda:1")
    assert [d for d, _ in calls] == ["cuda", "cuda", "tensorrt"]
    assert all(options["device_id"] == 1 for _, options in calls)
    assert {r.check: r.status for r in rows if r.check in ORT_ROWS} == dict.fromkeys(
        ORT_ROWS, "pass"
    )
