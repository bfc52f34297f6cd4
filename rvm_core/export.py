"""Export one streaming step to ONNX: a uint8 camera frame plus the state -> patch features.

The graph has static shapes: ``image`` uint8 [1,H,W,3] at the camera resolution (the resize and
the [0,1] scaling run inside the graph, via :func:`rvm_core.preprocess.to_model_input`) and
``state_in`` float32 (``[1,1+N,D]`` for the recurrent core); it returns ``features`` [1,D,h,w]
(the patch grid, CLS dropped; float32 or float16) and ``state_out`` (float32, like ``state_in``).
Model metadata (``rvm.*`` keys, see :data:`METADATA_KEYS`) is stored in the file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: `rvm` (whose parser imports this) stays torch-free
    import torch

    from .model import RVM

# Opset 20: LayerNormalization (17) and Gelu (20) are single ops, so the tanh GELU is one kernel
# instead of ~9 memory-bound elementwise ops (a faster ORT step than opset 18's: `python -m
# benchmarks runtime` with `rvm export-onnx --opset 18` measures it). Opsets up to 22 are
# accepted. Opset 23 adds the `Attention` op; ONNX Runtime 1.31 has CPU and CUDA kernels for
# it (onnxruntime/core/providers/cuda/llm/attention.h), but this exporter and the TensorRT
# path were never tested with it here, so it is refused rather than written untested.
DEFAULT_OPSET = 20
MAX_OPSET = 22
ATTENTION_MODES = ("onnx", "ort")
DEFAULT_ATTENTION = "onnx"

# Every metadata entry is a string (ONNX metadata_props); the runtime parses them back.
METADATA_KEYS = (
    "rvm.model_id",  # config name + short hash of the weights, e.g. "tiny-3f2a9c1d"
    "rvm.input_size",  # camera "HxW" (the uint8 image input)
    "rvm.model_size",  # "hxw" the graph resizes to (a multiple of the patch)
    "rvm.grid",  # grid "hxw" of the features
    "rvm.patch_stride",  # "sy,sx": camera pixels per feature cell (input_size / grid)
    "rvm.feature_dim",  # D
    "rvm.features_dtype",  # "float32" | "float16"
    "rvm.compute_dtype",  # "float32" | "float16" (weights and activations)
    "rvm.state_shape",  # JSON list, e.g. [1, 257, 128]
    "rvm.attention",  # "onnx" (plain MatMul/Softmax) | "ort" (com.microsoft contrib ops)
    "rvm.warmup_steps",  # extra steps on a stream's first frame (RVMConfig.warmup_steps)
    "rvm.config",  # RVMConfig JSON
    "rvm.version",  # rvm package version that wrote the file
)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote: the file and its metadata."""

    path: Path
    metadata: dict[str, str]


@functools.cache
def _streaming_step_class() -> type:
    """StreamingStep, defined on first use so importing this module is cheap (no torch)."""
    import torch
    from torch import nn

    from .preprocess import to_model_input

    class StreamingStep(nn.Module):
        """Image uint8 [1,H,W,3], state float32 -> (features [1,D,h,w], state float32)."""

        def __init__(
            self,
            model: RVM,
            model_size: tuple[int, int],
            features_dtype: torch.dtype = torch.float32,
            compute_dtype: torch.dtype = torch.float32,
        ) -> None:
            super().__init__()
            p = model.config.patch_size
            if model_size[0] % p or model_size[1] % p:
                raise ValueError(
                    f"model size {model_size[0]}x{model_size[1]} is not a multiple of the patch {p}"
                )
            self.model = model
            self.model_size = tuple(model_size)
            self.grid = model.feature_grid(self.model_size)
            self.features_dtype = features_dtype
            self.compute_dtype = compute_dtype

        def forward(
            self, image: torch.Tensor, state_in: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            x = to_model_input(image, self.model_size).to(self.compute_dtype)
            # A GRU core keeps the state in float32 in an exported graph (GatedTransformerCore
            # reads the export mode); others get the compute dtype.
            gru = self.model.config.aggregator == "gru"
            features, state = self.model.step(x, state_in if gru else state_in.to(x.dtype))
            b, _, d = features.shape
            grid = features[:, 1:].transpose(1, 2).reshape(b, d, *self.grid)
            # The state leaves the graph in float32 whatever the compute dtype: it is fed back
            # every frame, and rounding it to float16 each frame accumulates over a long stream.
            return grid.to(self.features_dtype), state.float()

    return StreamingStep


def __getattr__(name: str) -> Any:
    if name == "StreamingStep":
        return _streaming_step_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def state_shape(model: RVM, model_size: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the recurrent state for one stream at ``model_size`` ([1,1+N,D] for the GRU)."""
    p = model.config.patch_size
    n = (model_size[0] // p) * (model_size[1] // p)
    import torch

    encoded = torch.zeros(1, 1 + n, model.config.width)
    return tuple(model.init_state(encoded).shape)


def model_id(model: RVM) -> str:
    """Config name + first 8 hex digits of a SHA-256 over the weights (names, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{model.config.name}-{h.hexdigest()[:8]}"


def _rvm_version() -> str:
    try:
        from importlib.metadata import version

        return version("rvm")
    except Exception:  # not installed (source checkout on sys.path)
        return "unknown"


def export_onnx(
    model: RVM,
    out: str | os.PathLike,
    input_size: tuple[int, int],
    model_size: tuple[int, int] | None = None,
    fp16: bool = False,
    features_fp16: bool = False,
    attention: str = DEFAULT_ATTENTION,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Write one streaming step of ``model`` as ONNX for camera frames of ``input_size`` (H, W).

    ``model_size`` (default: the config's image_size) is what the graph resizes to. ``fp16``:
    float16 weights and compute (for CUDA/TensorRT), state I/O stays float32, features float16.
    ``features_fp16``: float32 compute, features cast to float16. ``attention="ort"`` replaces
    each attention by ONNX Runtime's ``com.microsoft.MultiHeadAttention`` contrib op.
    """
    import torch

    from .model import export_mode

    if opset > MAX_OPSET:
        raise ValueError(f"opset {opset} > {MAX_OPSET}: opset 23+ exports are not tested here")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    model_size = tuple(model_size or model.config.image_size)
    out = Path(out)
    compute = torch.float16 if fp16 else torch.float32
    feat_dtype = torch.float16 if (fp16 or features_fp16) else torch.float32
    ident = model_id(model)
    shape = state_shape(model, model_size)
    # Trace a copy: the fp16 cast never touches the caller's model (a float16 round trip
    # would change its weights).
    work = copy.deepcopy(model).eval().to(compute)
    step = _streaming_step_class()(work, model_size, feat_dtype, compute)
    image = torch.zeros(1, *input_size, 3, dtype=torch.uint8)
    state = torch.zeros(shape)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        contrib = attention == "ort"
        with export_mode.exporting(contrib_attention=contrib), warnings.catch_warnings():
            # The positional encoding is a numpy constant (the tracer warns about it), and the
            # TorchScript exporter warns about its own deprecation.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(
                step,
                (image, state),
                str(tmp),
                input_names=["image", "state_in"],
                output_names=["features", "state_out"],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
                **({"custom_opsets": {"com.microsoft": 1}} if contrib else {}),
            )
        gh, gw = step.grid
        metadata = {
            "rvm.model_id": ident,
            "rvm.input_size": f"{input_size[0]}x{input_size[1]}",
            "rvm.model_size": f"{model_size[0]}x{model_size[1]}",
            "rvm.grid": f"{gh}x{gw}",
            "rvm.patch_stride": f"{input_size[0] / gh:g},{input_size[1] / gw:g}",
            "rvm.feature_dim": str(model.config.width),
            "rvm.features_dtype": str(feat_dtype).removeprefix("torch."),
            "rvm.compute_dtype": str(compute).removeprefix("torch."),
            "rvm.state_shape": json.dumps(list(shape)),
            "rvm.attention": attention,
            "rvm.warmup_steps": str(model.config.warmup_steps),
            "rvm.config": model.config.to_json(),
            "rvm.version": _rvm_version(),
        }
        _write_metadata(tmp, metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, metadata)


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "rvm"
    onnx.save(proto, str(path))


# -- command line: rvm export-onnx -----------------------------------------------------------------
def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="default", help=".safetensors/.npz (default: shipped)")
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--input-size", required=True, help="camera HxW of the uint8 image input")
    p.add_argument("--model-size", default=None, help="HxW the graph resizes to (default: config)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights/compute (GPU), fp16 features")
    p.add_argument(
        "--features-fp16", action="store_true", help="fp32 compute, features output cast to fp16"
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_MODES,
        default=DEFAULT_ATTENTION,
        help="onnx: plain MatMul/Softmax (portable, TensorRT); ort: ONNX Runtime contrib op",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (<= {MAX_OPSET})")


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .preprocess import parse_size

    model = load_model(args.checkpoint)
    result = export_onnx(
        model,
        args.out,
        parse_size(args.input_size),
        parse_size(args.model_size) if args.model_size else None,
        fp16=args.fp16,
        features_fp16=args.features_fp16,
        attention=args.attention,
        opset=args.opset,
    )
    m = result.metadata
    print(
        f"wrote {result.path}: {m['rvm.model_id']}, image uint8 [1,{m['rvm.input_size']},3] -> "
        f"features {m['rvm.features_dtype']} [1,{m['rvm.feature_dim']},{m['rvm.grid']}], "
        f"state {m['rvm.state_shape']}"
    )
    return 0
