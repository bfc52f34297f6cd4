"""Build, save and load models: the project's safetensors format and the official ``.npz``.

Official checkpoints (google-deepmind/representations4d) are flat ``/``-joined Flax keys; every
size is inferred from the array shapes. Nothing here ever unpickles: ``.npz`` files are read with
``allow_pickle=False`` and project checkpoints are safetensors with the config in the metadata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import RVMConfig, get_config
from .model import RVM

# The model shipped with the package (trained here on CPU; see docs/MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "rvm_default.safetensors"
CONFIG_KEY = "rvm_config"
FORMAT_KEY = "format"
FORMAT = "rvm-safetensors-v1"

# Project module prefix -> official key prefix, most specific first.
_PREFIXES = (
    ("tokenizer.patch_embedding.proj.", "tokenizer/patch_embedding/Conv_0/"),
    ("encoder.norm.", "encoder/LayerNorm_0/"),
    ("encoder.", "encoder/"),
    ("core.", "rnn_core/"),
    ("decoder.embedder.", "decoder_embedder/"),
    ("decoder.delta_embedder.", "delta_embedder/"),
    ("decoder.detokenizer.", "detokenizer/Dense_0/"),
    ("decoder.mask_token", "mask_token"),
    ("decoder.transformer.", "decoder/"),
    ("cls_token", "cls_token"),
)
_ATTENTION = re.compile(r"(attention|ca_attention)\.(query|key|value|out)\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or does not match the model."""


def build_model(config: str | RVMConfig = "S", seed: int | None = None, **overrides) -> RVM:
    """A randomly initialised RVM from a config name (``"S"``, ``"tiny"``...) or object."""
    config = get_config(config, **overrides)
    if seed is None:
        return RVM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RVM(config)


def save_model(model: RVM, path: str | os.PathLike) -> None:
    """Write ``model`` as a project checkpoint (safetensors, config in metadata), atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {CONFIG_KEY: model.config.to_json(), FORMAT_KEY: FORMAT}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> RVM:
    """Load an official ``.npz``, a project ``.safetensors`` or ``"default"`` (eval mode)."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".npz":
        config, state = _read_official(path)
    else:
        config, state = _read_project(path)
    model = RVM(config)
    _load_state(model, state, path)
    return model.to(device).eval()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``"default"`` -> the shipped default model's path; anything else unchanged."""
    return DEFAULT_CHECKPOINT if str(path) == "default" else Path(path)


# -- project format ------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> RVMConfig:
    """The config stored in a project checkpoint (or inferred from an official one)."""
    path = resolve_checkpoint(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return official_config({k: npz[k].shape for k in npz.files})
    return _read_project(path, tensors=False)[0]


def _read_project(path: Path, tensors: bool = True) -> tuple[RVMConfig, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if CONFIG_KEY not in meta:
                raise CheckpointError(f"{path}: not an rvm checkpoint (no '{CONFIG_KEY}' metadata)")
            config = RVMConfig.from_json(meta[CONFIG_KEY])
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    return config, state


def init_from(model: RVM, path: str | os.PathLike) -> int:
    """Copy the tensors of a plain safetensors file into ``model``'s same-named parameters.

    A partial initialisation (e.g. the ImageNet stem from ``rvm stem-weights``): every tensor
    must name one of the model's parameters with the same shape; the rest keep their values.
    Returns the number of tensors copied.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"initialisation file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    bad = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    _check_keys(path, [], unexpected, bad)
    with torch.no_grad():
        for k, v in state.items():
            expected[k].copy_(v)
    return len(state)


def _load_state(model: RVM, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    _check_keys(path, missing, unexpected, bad)
    model.load_state_dict(state)


def _check_keys(path: Path | str, missing: list, unexpected: list, bad: list) -> None:
    """Raise one CheckpointError line naming missing/unexpected keys and bad shapes, if any."""
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if bad:
        problems.append(f"bad shapes: {_short(bad)}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))


def _short(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# -- official format -----------------------------------------------------------------------------
def official_key(name: str) -> str:
    """Project parameter name -> official Flax key (``encoder/layers_0/mlp/dense_in/kernel``)."""
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            name = theirs + name[len(ours) :]
            break
    else:
        raise KeyError(f"no official counterpart for parameter {name!r}")
    name = re.sub(r"(layers|xa_blocks)\.(\d+)\.", r"\1_\2/", name)
    name = name.replace(".", "/")
    if "norm/weight" in name or name.endswith("LayerNorm_0/weight"):
        return name[: -len("weight")] + "scale"
    return re.sub(r"/weight$", "/kernel", name)


def to_official(name: str, value: np.ndarray, heads: int | None) -> np.ndarray:
    """A project tensor in the official layout (``heads`` for attention projections)."""
    attn = _ATTENTION.search(name)
    if attn:
        proj, kind = attn.group(2), attn.group(3)
        d = value.shape[0] if kind == "bias" or proj != "out" else value.shape[1]
        if proj == "out":  # torch [D, H*hd] -> (H, hd, D)
            return value if kind == "bias" else value.T.reshape(heads, d // heads, -1)
        if kind == "bias":  # (H*hd,) -> (H, hd)
            return value.reshape(heads, -1)
        return value.T.reshape(-1, heads, value.shape[0] // heads)  # [H*hd, D] -> (D, H, hd)
    if name.endswith("patch_embedding.proj.weight"):  # [D,3,p,p] -> (1,p,p,3,D)
        return value.transpose(2, 3, 1, 0)[None]
    if value.ndim == 2 and name.endswith("weight"):  # Linear [out, in] -> (in, out)
        return value.T
    return value


def from_official(name: str, value: np.ndarray) -> np.ndarray:
    """An official array in the project layout for parameter ``name``."""
    attn = _ATTENTION.search(name)
    if attn:
        proj, kind = attn.group(2), attn.group(3)
        if kind == "bias":
            return value.reshape(-1)
        if proj == "out":  # (H, hd, D) -> [D, H*hd]
            return value.reshape(-1, value.shape[-1]).T
        return value.reshape(value.shape[0], -1).T  # (D, H, hd) -> [H*hd, D]
    if name.endswith("patch_embedding.proj.weight"):
        return value[0].transpose(3, 2, 0, 1)
    if value.ndim == 2 and name.endswith("weight"):
        return value.T
    return value


def official_config(shapes: dict[str, tuple[int, ...]]) -> RVMConfig:
    """Infer an RVMConfig from official key -> shape (patch, width, depths, heads, MLP widths)."""

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"not an official RVM checkpoint: missing key {key!r}")
        return shapes[key]

    def count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)/")
        return len({m.group(1) for k in shapes if (m := pat.match(k))})

    _, p, _, _, width = need("tokenizer/patch_embedding/Conv_0/kernel")
    enc_layers = count("encoder/layers_")
    core_layers = count("rnn_core/transformer/xa_blocks_")
    dec_layers = count("decoder/xa_blocks_")
    if enc_layers == 0 or core_layers == 0:
        raise CheckpointError("not an official RVM checkpoint: no encoder or rnn_core layers")
    fields = dict(
        name="official",
        patch_size=p,
        width=width,
        enc_layers=enc_layers,
        enc_heads=need("encoder/layers_0/attention/query/kernel")[1],
        enc_mlp=need("encoder/layers_0/mlp/dense_in/kernel")[1],
        core_layers=core_layers,
        core_heads=need("rnn_core/transformer/xa_blocks_0/attention/query/kernel")[1],
        core_mlp=need("rnn_core/transformer/xa_blocks_0/mlp/dense_in/kernel")[1],
        dec_layers=dec_layers,
        image_size=(16 * p, 16 * p),
    )
    if dec_layers:
        fields.update(
            dec_width=need("mask_token")[1],
            dec_heads=need("decoder/xa_blocks_0/attention/query/kernel")[1],
            dec_mlp=need("decoder/xa_blocks_0/mlp/dense_in/kernel")[1],
            num_deltas=need("delta_embedder/kernel")[0],
        )
    try:
        return RVMConfig(**fields)
    except ValueError as exc:
        raise CheckpointError(f"inconsistent official checkpoint: {exc}") from exc


def _read_official(path: Path) -> tuple[RVMConfig, dict[str, torch.Tensor]]:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable .npz ({exc})") from exc
    with npz:
        try:
            arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # object arrays need pickle: refuse them
            raise CheckpointError(f"{path}: unreadable .npz entry ({exc})") from exc
    config = official_config({k: v.shape for k, v in arrays.items()})
    return config, official_to_state(arrays, config, path)


def official_to_state(
    arrays: dict[str, np.ndarray], config: RVMConfig, path: Path | str = "<arrays>"
) -> dict[str, torch.Tensor]:
    """Official flat arrays -> project state dict, with a one-line error for any mismatch."""
    template = RVM(config).state_dict()
    wanted = {official_key(k): k for k in template}
    missing = sorted(set(wanted) - set(arrays))
    unexpected = sorted(set(arrays) - set(wanted))
    state, bad = {}, []
    for theirs, ours in wanted.items():
        if theirs not in arrays:
            continue
        value = from_official(ours, np.asarray(arrays[theirs], dtype=np.float32))
        if value.shape != tuple(template[ours].shape):
            bad.append(f"{theirs} {arrays[theirs].shape}")
            continue
        state[ours] = torch.from_numpy(np.ascontiguousarray(value))
    _check_keys(path, missing, unexpected, bad)
    return state


def model_to_official(model: RVM) -> dict[str, np.ndarray]:
    """A (GRU) model's weights as official flat arrays (what ``np.savez`` would store)."""
    if model.config.aggregator != "gru" or model.config.stem != "patch":
        raise ValueError("only the recurrent-core, patch-embedding model has an official layout")
    heads = _heads_by_prefix(model.config)
    out = {}
    for name, value in model.state_dict().items():
        h = next((n for pre, n in heads if name.startswith(pre)), None)
        out[official_key(name)] = to_official(name, value.detach().cpu().numpy(), h)
    return out


def _heads_by_prefix(config: RVMConfig) -> list[tuple[str, int]]:
    return [
        ("encoder.", config.enc_heads),
        ("core.", config.core_heads),
        ("decoder.", config.dec_heads),
    ]


def count_parameters(model: RVM) -> dict[str, int]:
    """Parameter counts: encoder (incl. tokenizer and CLS), core, decoder, encoder+core, total."""
    enc = sum(p.numel() for p in model.tokenizer.parameters()) + model.cls_token.numel()
    enc += sum(p.numel() for p in model.encoder.parameters())
    core = sum(p.numel() for p in model.core.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters()) if model.decoder is not None else 0
    return {
        "encoder": enc,
        "core": core,
        "decoder": dec,
        "encoder+core": enc + core,
        "total": enc + core + dec,
    }
