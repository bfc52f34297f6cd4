"""The one image conversion: area-average downscaling and bilinear upscaling, as OpenCV does."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rvm_core.preprocess import parse_size, resize_matrix, to_model_input


@pytest.mark.parametrize(
    "src, dst, interp",
    [
        ((480, 640), (96, 128), cv2.INTER_AREA),  # camera -> default model, integer factor
        ((360, 640), (96, 128), cv2.INTER_AREA),
        ((100, 100), (37, 53), cv2.INTER_AREA),  # non-integer factors
        ((40, 60), (64, 96), cv2.INTER_LINEAR),
    ],
)
def test_matches_opencv(src, dst, interp):
    img = (np.random.default_rng(0).random((*src, 3)) * 255).astype(np.uint8)
    ours = to_model_input(torch.from_numpy(img)[None], dst)[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(img.astype(np.float32) / 255, dst[::-1], interpolation=interp)
    assert ours.shape == (*dst, 3)
    assert np.abs(ours - ref).max() < 1e-5


def test_identity_and_weights():
    img = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8)
    x = to_model_input(img, (8, 12))
    assert torch.equal(x, img.permute(0, 3, 1, 2).float() / 255)
    for n_in, n_out in [(480, 96), (100, 37), (40, 64), (5, 5)]:
        np.testing.assert_allclose(resize_matrix(n_in, n_out).sum(1), 1.0, atol=1e-6)


def test_parse_size():
    assert parse_size("96x128") == (96, 128)
    for bad in ("96", "axb", "0x5"):
        with pytest.raises(ValueError):
            parse_size(bad)
