"""The runtime's numpy preprocessing gives the same tensor as Preprocess.torch_transform()."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
)
from edgeclip.runtime.preprocess import NumpyPreprocess


def _image(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    # smooth gradients + noise: resampling differences would show up at the edges
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(xx * 255 / max(1, w - 1)), (yy * 255 / max(1, h - 1)), ((xx + yy) * 127 / max(1, w + h))], -1
    )
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.convert(mode) if mode != "RGB" else img


@pytest.mark.parametrize(
    "size,resize,interp,mean,std",
    [
        (32, "shortest", "bicubic", CLIP_MEAN, CLIP_STD),
        (224, "shortest", "bicubic", CLIP_MEAN, CLIP_STD),
        (48, "squash", "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        (40, "shortest", "nearest", IMAGENET_MEAN, IMAGENET_STD),
    ],
)
@pytest.mark.parametrize("wh", [(32, 32), (40, 40), (300, 200), (123, 457), (17, 29), (640, 481)])
def test_matches_torch_transform(size, resize, interp, mean, std, wh):
    pp = Preprocess(size=size, mean=mean, std=std, resize=resize, interpolation=interp)
    npp = NumpyPreprocess.from_dict(pp.to_dict())
    img = _image(*wh, seed=wh[0] * 7 + wh[1])
    ref = pp.torch_transform()(img).numpy()
    got = npp(img)
    assert got.shape == ref.shape == (3, size, size)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5


def test_non_rgb_modes_and_batch():
    pp = Preprocess(size=32)
    npp = NumpyPreprocess.from_dict(pp.to_dict())
    imgs = [_image(50, 40, 1, "L"), _image(40, 60, 2, "RGBA"), _image(33, 33, 3)]
    b = npp.batch(imgs)
    assert b.shape == (3, 3, 32, 32)
    for i, im in enumerate(imgs):
        ref = pp.torch_transform()(im.convert("RGB")).numpy()
        assert np.abs(b[i] - ref).max() < 1e-5
    assert npp.batch([]).shape == (0, 3, 32, 32)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 32},
        {"size": 0, "mean": [0, 0, 0], "std": [1, 1, 1]},
        {"size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "magic"},
        {"size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "pad"},
    ],
)
def test_bad_preprocess_json(bad):
    with pytest.raises(EdgeClipError):
        NumpyPreprocess.from_dict(bad)
