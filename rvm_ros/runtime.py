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
documented in PR #19818 "update docs to include multi-cudagraph support"; -1 would mean "run
without capture"), and later steps replay it.
"""

from __future__ import annotations

import ctypes
import dataclasses
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


def _provider_library_error(name: str) -> str | None:
    """Why ORT's ``libonnxruntime_providers_<name>.so`` cannot load (None = it loads).

    onnxruntime-gpu lists the CUDA/TensorRT EPs even when the CUDA libraries are missing; the
    session then prints a multi-line error and silently runs on CPU. Loading the provider
    library first gives the real reason (e.g. "libcublasLt.so.13: cannot open shared object").
    """
    if name == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA execution provider"
    if name == "tensorrt" and "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no TensorRT execution provider"
    lib = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"
    if not lib.is_file():  # other platforms / layouts: let session creation decide
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return str(exc)
    return None


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
        for s in self.states:
            s.update_inplace(rt._zero_state)
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
                # One captured graph per (stream, parity): ids are never reused, since a graph
                # replays the buffer addresses it was captured with.
                ro.add_run_config_entry("gpu_graph_id", str(2 * index + parity))
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
    (TensorRT EP, fp16 kernels allowed unless ``trt_fp16=False``, engines cached in
    ``trt_cache_dir``; CUDA EP for anything TensorRT does not take); "auto" = cuda if it can
    be created, else cpu. A GPU device that cannot be created (no GPU, CUDA libraries missing)
    logs one warning and falls back to the CPU. ``spin=True`` lets ORT's idle threads
    busy-wait (slightly faster on a dedicated machine; starves other threads on a small one).
    Calls are serialised by a lock (one session, fixed buffers). The first frame of a stream
    (after creation or ``reset``) is stepped ``1 + warmup`` times: the warm start of
    ``RVMConfig.warmup_steps``; None = the model file's ``rvm.warmup_steps``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "auto",
        trt_cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        cuda_graph: bool = True,
        trt_fp16: bool = True,
        device_id: int = 0,
        spin: bool = False,
        warmup: int | None = None,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if warmup is not None and (not isinstance(warmup, int) or warmup < 0):
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model not found: {self.model_path}")
        so = ort.SessionOptions()
        # ORT_ENABLE_ALL (the default, stated for clarity): constant folding, LayerNorm/Gelu/
        # MatMul+Add fusions; the saved graph stays portable and is optimised at load time.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are noise here
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        if not spin:
            # Idle ORT threads otherwise busy-wait between runs and starve the node's executor,
            # tracker and decoder threads on small machines (measured: 44 -> 26 ms per step
            # with a tracker running beside it on 2 cores).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.device_id = device_id
        self.session, self.device = self._create_session(
            so, device, trt_cache_dir, cuda_graph, trt_fp16
        )
        self.cuda_graph = cuda_graph and self.device == "cuda"
        self.ort_device = "cpu" if self.device == "cpu" else "cuda"
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        self.warmup = self.metadata.warmup_steps if warmup is None else warmup
        self._zero_state = np.zeros(self.metadata.state_shape, np.float32)
        self._image_shape = (*self.metadata.input_size, 3)
        self._streams: dict[str, _Stream] = {}
        self._next_index = 0
        self._lock = threading.Lock()

    # -- session -------------------------------------------------------------------------------
    def _create_session(
        self,
        so: ort.SessionOptions,
        device: str,
        trt_cache_dir: str | os.PathLike | None,
        cuda_graph: bool,
        trt_fp16: bool,
    ) -> tuple[ort.InferenceSession, str]:
        cpu = ["CPUExecutionProvider"]
        if device == "cpu":
            return ort.InferenceSession(str(self.model_path), so, providers=cpu), "cpu"
        cuda_opts = {"device_id": str(self.device_id)}
        if device in ("cuda", "auto"):
            if cuda_graph:
                cuda_opts["enable_cuda_graph"] = "1"
            providers: list[Any] = [("CUDAExecutionProvider", cuda_opts), *cpu]
            want, libs = "CUDAExecutionProvider", ("cuda",)
        else:
            trt_opts = {
                "device_id": str(self.device_id),
                "trt_fp16_enable": str(trt_fp16),  # lets TensorRT pick fp16 kernels
                "trt_engine_cache_enable": "True" if trt_cache_dir else "False",
            }
            if trt_cache_dir:
                os.makedirs(trt_cache_dir, exist_ok=True)
                trt_opts["trt_engine_cache_path"] = str(trt_cache_dir)
                trt_opts["trt_timing_cache_enable"] = "True"
                trt_opts["trt_timing_cache_path"] = str(trt_cache_dir)
            providers = [
                ("TensorrtExecutionProvider", trt_opts),
                ("CUDAExecutionProvider", cuda_opts),
            ]
            providers += cpu
            want, libs = "TensorrtExecutionProvider", ("cuda", "tensorrt")
        reason = next((r for r in map(_provider_library_error, libs) if r), None)
        if reason is None:
            try:
                sess = ort.InferenceSession(str(self.model_path), so, providers=providers)
            except Exception as exc:  # e.g. no CUDA device: ORT raises a long RuntimeError
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            else:
                if sess.get_providers()[0] == want:
                    return sess, "tensorrt" if want.startswith("Tensorrt") else "cuda"
                reason = f"ONNX Runtime gave {sess.get_providers()} instead of {want}"
        level = logging.INFO if device == "auto" else logging.WARNING
        log.log(level, "rvm runtime: %s unavailable (%s); using the CPU", device, reason)
        return ort.InferenceSession(str(self.model_path), so, providers=cpu), "cpu"

    # -- streams -------------------------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        """Names of the streams created so far (in creation order)."""
        return list(self._streams)

    def stream(self, name: str = "default") -> StreamHandle:
        """A handle on stream ``name`` (its buffers are created here if new)."""
        with self._lock:
            self._get_stream(name)
        return StreamHandle(self, name)

    def _get_stream(self, name: str) -> _Stream:
        if not isinstance(name, str) or not name:
            raise ValueError(f"stream name must be a non-empty string, got {name!r}")
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = _Stream(self, name, self._next_index)
            self._next_index += 1
        return s

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
        frame = self._check_image(image)
        with self._lock:
            s = self._get_stream(stream)
            s.image.update_inplace(frame)  # copy into the bound (device) buffer
            for _ in range(1 + (self.warmup if s.frames == 0 else 0)):
                p = s.parity
                self.session.run_with_iobinding(s.bindings[p], s.run_options[p])
                s.parity = 1 - p
            s.frames += 1
            out = s.features.numpy()[0]
            # On the CPU, numpy() is a view of the bound buffer that the next step overwrites;
            # from a GPU it is already a fresh host copy.
            return out.copy() if self.ort_device == "cpu" else out

    def reset(self, stream: str | None = None) -> None:
        """Zero the state of ``stream`` (all streams if None), in place: no graph recapture."""
        with self._lock:
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
