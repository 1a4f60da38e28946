"""Image preprocessing in numpy + Pillow, matching ``edgeclip.data.transforms.Preprocess.torch_transform()``.

torchvision's ``Resize`` on a PIL image calls Pillow's ``Image.resize`` with the same filter, so the
resampled pixels are identical; the output size, centre-crop offsets, ``ToTensor`` scaling and
``Normalize`` follow torchvision's formulas. ``tests/test_runtime_preprocess.py`` checks the parity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.images import MAX_INPUT_SIZE

_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
}


@dataclass(frozen=True)
class NumpyPreprocess:
    """Resize (shorter side, or ``squash`` to a square), centre crop, scale to [0, 1], normalise -> CHW float32."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest"
    interpolation: str = "bicubic"

    @classmethod
    def from_dict(cls, d: dict) -> NumpyPreprocess:
        try:
            size = int(d["size"])
            mean = tuple(float(v) for v in d["mean"])
            std = tuple(float(v) for v in d["std"])
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeClipError(f"preprocess.json is missing or has a bad field: {e}") from None
        resize = str(d.get("resize", "shortest"))
        interp = str(d.get("interpolation", "bicubic")).lower()
        if resize not in ("shortest", "squash"):
            raise EdgeClipError(f"preprocess.json: unknown resize mode {resize!r} (shortest, squash)")
        if interp not in _FILTERS:
            raise EdgeClipError(f"preprocess.json: unknown interpolation {interp!r} ({', '.join(_FILTERS)})")
        if not 0 < size <= MAX_INPUT_SIZE:
            raise EdgeClipError(f"preprocess.json: size {size} is outside 1..{MAX_INPUT_SIZE}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise EdgeClipError(f"preprocess.json: bad size/mean/std ({size}, {mean}, {std})")
        return cls(size, mean, std, resize, interp)  # type: ignore[arg-type]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step (torchvision's ``_compute_resized_output_size``)."""
        if self.resize == "squash":
            return self.size, self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def geometry(self, img: Image.Image) -> Image.Image:
        """Resize + centre crop of an RGB PIL image."""
        w, h = img.size
        nw, nh = self.output_size(w, h)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _FILTERS[self.interpolation])
        if (nw, nh) != (self.size, self.size):
            top = int(round((nh - self.size) / 2.0))
            left = int(round((nw - self.size) / 2.0))
            img = img.crop((left, top, left + self.size, top + self.size))
        return img

    def __call__(self, img: Image.Image) -> np.ndarray:
        """(3, size, size) float32."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(self.geometry(img), dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(B, 3, size, size) float32."""
        if not images:
            return np.zeros((0, 3, self.size, self.size), np.float32)
        return np.stack([self(im) for im in images])
