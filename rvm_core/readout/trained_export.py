"""Export the trained readout's per-frame step to ONNX (torch side; the runner is torch-free).

Graph inputs: ``features`` float32 [1,D,h,w] (the node's FeatureMap layout), ``gray`` uint8
[H,W] (the camera frame, gray), ``state`` float32 [K,S], ``new`` float32 [K]; outputs ``xy``
[K,2] px, ``visibility`` [K], ``state_out`` [K,S]. K is dynamic; H, W are fixed at export
(constant cost per frame). The readout's metadata (model id, grid, state size) is stored in the
ONNX model's metadata under ``rvm_readout``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .trained_net import ReadoutNet, ReadoutStep

INPUTS = ("features", "gray", "state", "new")
OUTPUTS = ("xy", "visibility", "state_out")


def example_inputs(net: ReadoutNet, meta: dict[str, Any], image_hw: tuple[int, int], k: int = 4):
    """Example step inputs (features, gray, state, new) for tracing and tests."""
    gen = torch.Generator().manual_seed(0)
    h, w = meta["grid_hw"]
    feats = torch.randn(1, net.config.feature_dim, h, w, generator=gen)
    gray = torch.randint(0, 256, tuple(image_hw), generator=gen, dtype=torch.uint8)
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([image_hw[1] - 1.0, image_hw[0] - 1.0])
    return feats, gray, net.new_state(xy), torch.ones(k)


def export_readout(
    net: ReadoutNet,
    meta: dict[str, Any],
    path: str | Path,
    image_hw: tuple[int, int] = (480, 640),
) -> Path:
    """Write the step graph for camera frames of ``image_hw`` to ``path`` -> path."""
    import onnx

    path = Path(path)
    step = ReadoutStep(net.eval())
    args = example_inputs(net, meta, image_hw)
    with torch.no_grad():
        torch.onnx.export(
            step,
            args,
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={
                "state": {0: "K"},
                "new": {0: "K"},
                "xy": {0: "K"},
                "visibility": {0: "K"},
                "state_out": {0: "K"},
            },
            opset_version=20,
            dynamo=False,
        )
    model = onnx.load(str(path))
    info = dict(
        meta,
        readout_config=json.loads(net.config.to_json()),
        state_dim=net.layout.dim,
        image_hw=list(image_hw),
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "rvm_readout", json.dumps(info)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
