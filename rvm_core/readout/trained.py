"""Run the trained readout's exported step in ONNX Runtime (numpy only: the node imports this).

The graph was exported for one camera size; frames of another size are resized to it and the
positions mapped back (pixel centres at integers on both sides). One state row per track, kept
by the caller (``PointTracker(method="trained")``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from .trained_io import ReadoutMismatchError, check_model, resolve_readout


class TrainedReadout:
    """ONNX Runtime session of the readout step plus its metadata (model id, grid, sizes)."""

    def __init__(self, path: str | os.PathLike = "default", threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = resolve_readout(path)
        if not Path(self.path).is_file():
            raise ReadoutMismatchError(
                f"trained readout not found: {self.path} (make one: rvm train-readout "
                "--checkpoint <model>)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), opts, providers=["CPUExecutionProvider"]
        )
        props = self.session.get_modelmeta().custom_metadata_map
        if "rvm_readout" not in props:
            raise ReadoutMismatchError(
                f"{self.path}: not a trained readout (no rvm_readout metadata)"
            )
        self.meta = json.loads(props["rvm_readout"])
        self.state_dim = int(self.meta["state_dim"])
        self.image_hw = tuple(self.meta["image_hw"])
        self.grid_hw = tuple(self.meta["grid_hw"])
        self.feature_dim = int(self.meta["feature_dim"])
        self.model_id = self.meta.get("model_id")

    def check_model(self, model_id: str | None) -> None:
        """Raise one line if the readout was trained on another model than ``model_id``."""
        check_model(self.meta, model_id, str(self.path))

    def check_features(self, features: np.ndarray) -> None:
        """Raise one line if a feature map [h,w,C] is not the shape this readout was trained on."""
        shape = tuple(features.shape)
        want = (*self.grid_hw, self.feature_dim)
        if shape != want:
            raise ReadoutMismatchError(
                f"{self.path} was trained on features {want[0]}x{want[1]}x{want[2]} of model "
                f"{self.model_id}, got {'x'.join(map(str, shape))}: retrain with "
                "`rvm train-readout --checkpoint <this model>`"
            )

    def _to_graph(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gray frame [H,W] -> the graph's size, and the (sx, sy) pixel scale into it."""
        h, w = self.image_hw
        scale = np.array([w / gray.shape[1], h / gray.shape[0]])
        if gray.shape != (h, w):
            interp = cv2.INTER_AREA if gray.shape[0] > h else cv2.INTER_LINEAR
            gray = cv2.resize(gray, (w, h), interpolation=interp)
        return np.ascontiguousarray(gray, np.uint8), scale

    def step(
        self, features: np.ndarray, gray: np.ndarray, state: np.ndarray, new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features [h,w,C], gray uint8 [H,W], state [K,S] (new rows: xy in camera px), new [K]
        -> (xy [K,2] camera px, visibility [K] in [0,1], state [K,S])."""
        self.check_features(features)
        img, scale = self._to_graph(gray)
        state = np.array(state, dtype=np.float32, copy=True)
        sel = np.asarray(new, bool)
        if scale[0] != 1 or scale[1] != 1:  # query positions arrive in camera pixels
            state[sel, :2] = (state[sel, :2] + 0.5) * scale - 0.5
        fmap = np.ascontiguousarray(np.moveaxis(np.asarray(features, np.float32), -1, 0)[None])
        xy, vis, out = self.session.run(
            None,
            {"features": fmap, "gray": img, "state": state, "new": sel.astype(np.float32)},
        )
        xy = (xy.astype(np.float64) + 0.5) / scale - 0.5
        return xy, vis.astype(np.float64), out

    def new_rows(self, xy: np.ndarray) -> np.ndarray:
        """State rows [K,S] of tracks starting at camera-pixel xy [K,2] (step them with new=1)."""
        rows = np.zeros((len(xy), self.state_dim), np.float32)
        rows[:, :2] = xy
        return rows
