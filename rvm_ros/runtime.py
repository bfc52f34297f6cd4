"""Streaming RVM on ONNX Runtime: one session, one recurrent state per stream (camera).

Deployment side: imports numpy and onnxruntime only (no torch, no ROS). The model file is an
``rvm export-onnx`` graph: ``image`` uint8 [1,H,W,3] + ``state_in`` -> ``features`` [1,D,h,w] +
``state_out``.

Every run goes through IOBinding with fixed buffers on the execution device, on the CPU too (so
the same code is tested here): per stream one image buffer, one features buffer and two state
buffers used ping-pong (step k reads state[k % 2] and writes state[1 - k % 2]; a buffer is never
bound as both input and output). A new frame is copied into the bound image buffer
(``OrtValue.update_inplace``) and ``reset`` zero-fills the next input state in place, so every
buffer address stays fixed. That is what CUDA graphs need: with the CUDA EP and
``enable_cuda_graph``, each (stream, parity) binding is captured once as its own graph, selected
per run by the ``gpu_graph_id`` run-config entry (multi-graph support: onnxruntime PR #19636,
documented in PR #19818 "update docs to include multi-cudagraph support"; ids start at 1, see
:func:`graph_id`), and later steps replay it. Each binding's first run (the capture) happens
when its stream is created, for the constructor's ``streams`` inside the fallback chain, and
all runs happen on one thread owned by the runtime (CUDA graphs are per thread in ORT).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """The ``rvm.*`` metadata of an exported model (see ``rvm_core.export.METADATA_KEYS``)."""

    model_id: str
    input_size: tuple[int, int]  # camera (H, W) of the uint8 image input
    model_size: tuple[int, int]  # (h_px, w_px) the graph resizes to
    grid: tuple[int, int]  # feature grid (h, w)
    patch_stride: tuple[float, float]  # camera pixels per feature cell (y, x)
    feature_dim: int  # D
    features_dtype: str  # "float32" | "float16"
    compute_dtype: str
    state_shape: tuple[int, ...]
    attention: str
    warmup_steps: int  # extra steps on a stream's first frame (0 in files without the key)
    config: dict[str, Any]
    version: str

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse ONNX metadata_props; ValueError names the first missing/bad key."""

        def get(key: str) -> str:
            if f"rvm.{key}" not in props:
                raise ValueError(f"not an rvm export: metadata 'rvm.{key}' missing")
            return props[f"rvm.{key}"]

        def size(key: str) -> tuple[int, int]:
            h, w = get(key).lower().split("x")
            return int(h), int(w)

        sy, sx = get("patch_stride").split(",")
        return cls(
            model_id=get("model_id"),
            input_size=size("input_size"),
            model_size=size("model_size"),
            grid=size("grid"),
            patch_stride=(float(sy), float(sx)),
            feature_dim=int(get("feature_dim")),
            features_dtype=get("features_dtype"),
            compute_dtype=get("compute_dtype"),
            state_shape=tuple(json.loads(get("state_shape"))),
            attention=get("attention"),
            warmup_steps=int(props.get("rvm.warmup_steps", 0)),
            config=json.loads(get("config")),
            version=get("version"),
        )


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the ``rvm.*`` metadata of an exported model (loads it once, unoptimised, on CPU)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines are cached by default: ``$XDG_CACHE_HOME/rvm/tensorrt``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rvm" / "tensorrt"


def graph_id(index: int, parity: int) -> int:
    """The ``gpu_graph_id`` of stream number ``index`` at ``parity``: 1, 2, 3, ...

    ORT reserves 0 (``kCudaGraphAnnotationDefault``, the graph of runs that set no id) and -1
    (run without capture), in ``onnxruntime/core/providers/cuda/cuda_graph.h``; ids are never
    reused, since a graph replays the buffer addresses it was captured with.
    """
    return 1 + 2 * index + parity


@functools.cache
def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* wheels (or torch) itself;
    # without this, cuDNN is loaded lazily on the first run, outside the fallback. It prints
    # one line per missing library, which the library check below reports better.
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            preload()
        except Exception:  # a layout preload_dlls does not know: the library check decides
            pass


def provider_library_error(name: str) -> str | None:
    """Why ORT's ``libonnxruntime_providers_<name>.so`` cannot load (None = it loads).

    onnxruntime-gpu lists the CUDA/TensorRT EPs even when the CUDA libraries are missing; the
    session then prints a multi-line error and silently runs on CPU (even with
    ``enable_fallback=0``). Loading the provider library first gives the real reason (e.g.
    "libcublasLt.so.13: cannot open shared object").
    """
    if name == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA execution provider"
    if name == "tensorrt" and "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no TensorRT execution provider"
    _preload_cuda_libraries()
    lib = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"
    if not lib.is_file():  # other platforms / layouts: let session creation decide
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return str(exc)
    return None


def _check_stream_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"stream name must be a non-empty string, got {name!r}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One execution setup the runtime tried, in order, and why it was not used (None: used)."""

    setup: str  # "tensorrt" | "cuda+graphs" | "cuda" | "cpu"
    reason: str | None


# setup -> (what the log line calls it, the EP that must come first, provider libraries)
_SETUPS = {
    "tensorrt": ("tensorrt", "TensorrtExecutionProvider", ("cuda", "tensorrt")),
    "cuda+graphs": ("cuda with CUDA graphs", "CUDAExecutionProvider", ("cuda",)),
    "cuda": ("cuda without CUDA graphs", "CUDAExecutionProvider", ("cuda",)),
    "cpu": ("the CPU", "CPUExecutionProvider", ()),
}


def fallback_chain(device: str, cuda_graph: bool = True) -> list[str]:
    """The setups ``RVMRuntime(device=...)`` tries, in order; the first that works is used."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return ["cpu"]
    cuda = ["cuda+graphs", "cuda"] if cuda_graph else ["cuda"]
    return (["tensorrt"] if device == "tensorrt" else []) + cuda + ["cpu"]


class _Runner:
    """The one thread that runs the session.

    The CUDA EP keeps captured CUDA graphs in per-thread state (``PerThreadContext`` in
    onnxruntime/core/providers/cuda/cuda_execution_provider.h): a graph captured on one thread
    is not replayed from another, which captures again on its first run. So every run of a
    session, the construction-time warm-up included, happens on this thread, whichever thread
    calls ``step`` (the node constructs on its main thread and steps on a worker).
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rvm-ort")

    def __call__(self, fn: Any, *args: Any) -> Any:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Stream:
    """Device buffers, the two ping-pong bindings and the parity of one stream."""

    def __init__(self, rt: RVMRuntime, name: str, index: int) -> None:
        meta, dev, dev_id = rt.metadata, rt.ort_device, rt.device_id
        h, w = meta.input_size
        self.name = name
        self.image = ort.OrtValue.ortvalue_from_shape_and_type((1, h, w, 3), np.uint8, dev, dev_id)
        feat_shape = (1, meta.feature_dim, *meta.grid)
        feat_dtype = _DTYPES[meta.features_dtype]
        self.features = ort.OrtValue.ortvalue_from_shape_and_type(
            feat_shape, feat_dtype, dev, dev_id
        )
        self.states = [
            ort.OrtValue.ortvalue_from_shape_and_type(meta.state_shape, np.float32, dev, dev_id)
            for _ in range(2)
        ]
        self.bindings = []
        self.run_options = []
        for parity in (0, 1):
            b = rt.session.io_binding()
            b.bind_ortvalue_input("image", self.image)
            b.bind_ortvalue_input("state_in", self.states[parity])
            b.bind_ortvalue_output("features", self.features)
            b.bind_ortvalue_output("state_out", self.states[1 - parity])
            self.bindings.append(b)
            ro = ort.RunOptions()
            if rt.cuda_graph:
                # One captured graph per (stream, parity).
                ro.add_run_config_entry("gpu_graph_id", str(graph_id(index, parity)))
            self.run_options.append(ro)
        self.parity = 0
        self.frames = 0


class StreamHandle:
    """One named stream of a runtime: ``step(image) -> features``, ``reset()``."""

    def __init__(self, runtime: RVMRuntime, name: str) -> None:
        self.runtime = runtime
        self.name = name

    def step(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H,W,3] RGB frame -> features [D,h,w] (this stream's state advances)."""
        return self.runtime.step(image, self.name)

    def reset(self) -> None:
        """Start this stream over from the zero state."""
        self.runtime.reset(self.name)


class RVMRuntime:
    """An ONNX Runtime session of an exported RVM step with one recurrent state per stream.

    ``device``: "cpu"; "cuda" (CUDA EP, CUDA graphs unless ``cuda_graph=False``); "tensorrt"
    (TensorRT EP, engines cached in ``trt_cache_dir``, default :func:`default_trt_cache_dir`;
    fp16 kernels only for fp16 exports unless ``trt_fp16`` says otherwise; CUDA EP for
    anything TensorRT does not take); "auto" = cuda if it works, else cpu. The setups of
    :func:`fallback_chain` are tried in order with ONNX Runtime's own fallback disabled, each
    including its first run of every stream in ``streams`` (cuDNN loading, CUDA-graph capture);
    the first that works is used and, if it is not the first, one line logs why (``attempts``
    keeps every reason). ``tf32=False`` turns off TF32 matmuls in the CUDA EP (on by default
    there; off for parity checks at 1e-4). ``spin=True`` lets ORT's idle threads busy-wait
    (slightly faster on a dedicated machine; starves other threads on a small one). Calls are
    serialised by a lock (one session, fixed buffers) and run on one runtime-owned thread. The
    first frame of a stream (after creation or ``reset``) is stepped ``1 + warmup`` times: the
    warm start of ``RVMConfig.warmup_steps``; None = the model file's ``rvm.warmup_steps``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "auto",
        trt_cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        cuda_graph: bool = True,
        trt_fp16: bool | None = None,
        device_id: int = 0,
        spin: bool = False,
        warmup: int | None = None,
        tf32: bool = True,
        streams: tuple[str, ...] | list[str] = ("default",),
    ) -> None:
        chain = fallback_chain(device, cuda_graph)
        if warmup is not None and (not isinstance(warmup, int) or warmup < 0):
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        for name in streams:
            _check_stream_name(name)
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model not found: {self.model_path}")
        self.device_id = device_id
        self._options = dict(
            trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir(),
            trt_fp16=trt_fp16,
            tf32=tf32,
            threads=threads,
            spin=spin,
        )
        self._warmup_arg = warmup
        self._lock = threading.Lock()
        self._closed = False
        self._runner = _Runner()
        self.attempts: list[Attempt] = []
        try:
            self._try_chain(chain, streams)
        except BaseException:
            self.close()  # the run thread may already have started (a GPU setup's first runs)
            raise
        self._log_fallback(device)

    def _try_chain(self, chain: list[str], streams: tuple[str, ...] | list[str]) -> None:
        """Open the first setup of ``chain`` that works, recording every attempt."""
        for setup in chain:
            if setup == "cpu":  # the last resort: its errors (a broken model file) propagate
                self._open(setup, streams)
                self.attempts.append(Attempt(setup, None))
                return
            reason = next((r for r in map(provider_library_error, _SETUPS[setup][2]) if r), None)
            if reason is None:
                try:
                    self._open(setup, streams)
                except Exception as exc:  # ORT raises several types; the first line says why
                    reason = first_line(exc)
            self.attempts.append(Attempt(setup, reason))
            if reason is None:
                return

    # -- session -------------------------------------------------------------------------------
    def _session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        # ORT_ENABLE_ALL (the default, stated for clarity): constant folding, LayerNorm/Gelu/
        # MatMul+Add fusions; the saved graph stays portable and is optimised at load time.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are noise here
        threads = self._options["threads"]
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        if not self._options["spin"]:
            # Idle ORT threads otherwise busy-wait between runs and starve the node's executor,
            # tracker and decoder threads on small machines (docs/runtime.md has the numbers).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def _providers(self, setup: str) -> list[Any]:
        """The provider list of one setup of :func:`fallback_chain`."""
        cuda_opts = {
            "device_id": str(self.device_id),
            # TF32 is the CUDA EP's default (use_tf32=1): ~1e-3 relative error in fp32 matmuls.
            "use_tf32": "1" if self._options["tf32"] else "0",
        }
        if setup == "cpu":
            return ["CPUExecutionProvider"]
        if setup == "cuda+graphs":
            return [
                ("CUDAExecutionProvider", {**cuda_opts, "enable_cuda_graph": "1"}),
                "CPUExecutionProvider",
            ]
        if setup == "cuda":
            return [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        fp16 = self._options["trt_fp16"]
        if fp16 is None:  # TensorRT's own default is fp16 kernels on: wrong for fp32 exports
            fp16 = read_metadata(self.model_path).compute_dtype == "float16"
        cache = self._options["trt_cache_dir"]
        os.makedirs(cache, exist_ok=True)
        trt_opts = {
            "device_id": str(self.device_id),
            "trt_fp16_enable": "True" if fp16 else "False",
            # Engines take minutes to build for big models; cached per model and GPU by ORT.
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
        }
        return [
            ("TensorrtExecutionProvider", trt_opts),
            ("CUDAExecutionProvider", cuda_opts),
            "CPUExecutionProvider",
        ]

    def _open(self, setup: str, streams: tuple[str, ...] | list[str]) -> None:
        """Create the session of ``setup`` and run every (stream, parity) once; raises if not."""
        # enable_fallback=0: ORT's constructor would otherwise catch an EP error itself, print a
        # banner and rebuild on its own fallback providers, so a CUDA-graph refusal would land
        # on the CPU (or on CUDA without our options) with the reason lost (onnxruntime 1.31
        # onnxruntime_inference_collection.py, InferenceSession.__init__).
        session = ort.InferenceSession(
            str(self.model_path),
            self._session_options(),
            providers=self._providers(setup),
            enable_fallback=0,
        )
        want = _SETUPS[setup][1]
        if session.get_providers()[0] != want:
            raise RuntimeError(f"ONNX Runtime gave {session.get_providers()} instead of {want}")
        self.session = session
        self.device = "cuda" if setup.startswith("cuda") else setup
        self.cuda_graph = setup == "cuda+graphs"
        # Where the bound buffers live: the device of the EP that runs the graph.
        self.ort_device = "cpu" if session.get_providers()[0] == "CPUExecutionProvider" else "cuda"
        self.metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        self.warmup = self.metadata.warmup_steps if self._warmup_arg is None else self._warmup_arg
        self._zero_state = np.zeros(self.metadata.state_shape, np.float32)
        self._image_shape = (*self.metadata.input_size, 3)
        self._streams: dict[str, _Stream] = {}
        self._next_index = 0
        for name in streams:
            self._get_stream(name)

    def _log_fallback(self, device: str) -> None:
        failed = [a for a in self.attempts if a.reason is not None]
        if not failed:
            return
        used = _SETUPS[self.attempts[-1].setup][0]
        what = device if self.device == "cpu" else _SETUPS[failed[0].setup][0]
        reasons = list(dict.fromkeys(a.reason for a in failed))  # e.g. one missing library
        if len(reasons) > 1:
            reasons = [f"{_SETUPS[a.setup][0]}: {a.reason}" for a in failed]
        level = logging.INFO if device == "auto" else logging.WARNING
        log.log(level, "rvm runtime: %s unavailable (%s); using %s", what, "; ".join(reasons), used)

    def close(self) -> None:
        """Stop the run thread and free the session and stream buffers; later calls are no-ops."""
        with self._lock:  # waits for a step in progress
            self._closed = True
            self._runner.close()
            self.session = None
            self._streams = {}

    def __enter__(self) -> RVMRuntime:
        """``with RVMRuntime(...) as rt:`` closes the runtime on leaving the block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the runtime (exceptions propagate)."""
        self.close()

    def _check_open(self) -> None:
        """Raise the one-line error of a closed runtime."""
        if self._closed:
            raise RuntimeError("runtime is closed")

    # -- streams -------------------------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        """Names of the streams created so far (in creation order)."""
        return list(self._streams)

    def stream(self, name: str = "default") -> StreamHandle:
        """A handle on stream ``name`` (its buffers are created here if new)."""
        with self._lock:
            self._check_open()
            self._get_stream(name)
        return StreamHandle(self, name)

    def _get_stream(self, name: str) -> _Stream:
        _check_stream_name(name)
        s = self._streams.get(name)
        if s is None:
            s = _Stream(self, name, self._next_index)
            self._runner(self._first_runs, s)
            self._streams[name] = s
            self._next_index += 1
        return s

    def _first_runs(self, s: _Stream) -> None:
        """Run both bindings of a new stream once on a zero frame, then zero its states.

        The first run of a binding is where ORT loads cuDNN lazily and captures its CUDA graph;
        failing here (inside the fallback at construction) beats failing on every frame later.
        """
        s.image.update_inplace(np.zeros((1, *self._image_shape), np.uint8))
        for parity in (0, 1):
            s.states[parity].update_inplace(self._zero_state)
            self.session.run_with_iobinding(s.bindings[parity], s.run_options[parity])
        for state in s.states:
            state.update_inplace(self._zero_state)

    def _check_image(self, image: Any) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise ValueError(f"image must be a numpy uint8 array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
        if image.shape != self._image_shape:
            h, w, _ = self._image_shape
            raise ValueError(
                f"image must be {h}x{w}x3 (H,W,3 RGB) for this model, got shape "
                f"{tuple(image.shape)}; resize it, or export with --input-size at the camera's HxW"
            )
        return np.ascontiguousarray(image[None])

    # -- streaming -----------------------------------------------------------------------------
    def step(self, image: np.ndarray, stream: str = "default") -> np.ndarray:
        """uint8 [H,W,3] RGB frame -> features [D,h,w] of ``stream`` (its state advances)."""
        with self._lock:
            self._check_open()
            frame = self._check_image(image)
            s = self._get_stream(stream)
            s.image.update_inplace(frame)  # copy into the bound (device) buffer
            self._runner(self._run, s, 1 + (self.warmup if s.frames == 0 else 0))
            s.frames += 1
            out = s.features.numpy()[0]
            # On the CPU, numpy() is a view of the bound buffer that the next step overwrites;
            # from a GPU it is already a fresh host copy.
            return out.copy() if self.ort_device == "cpu" else out

    def _run(self, s: _Stream, times: int) -> None:
        for _ in range(times):
            p = s.parity
            self.session.run_with_iobinding(s.bindings[p], s.run_options[p])
            s.parity = 1 - p

    def reset(self, stream: str | None = None) -> None:
        """Zero the state of ``stream`` (all streams if None), in place: no graph recapture."""
        with self._lock:
            self._check_open()
            names = list(self._streams) if stream is None else [stream]
            for name in names:
                s = self._streams.get(name)
                if s is None:
                    continue  # a stream that never ran is already at the zero state
                s.states[s.parity].update_inplace(self._zero_state)
                s.frames = 0

    def frames(self, stream: str = "default") -> int:
        """Frames stepped on ``stream`` since its creation or last reset."""
        s = self._streams.get(stream)
        return 0 if s is None else s.frames

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"RVMRuntime({m.model_id}, device={self.device}, input={m.input_size}, "
            f"grid={m.grid}, streams={len(self._streams)})"
        )
