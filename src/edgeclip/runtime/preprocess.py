"""Image preprocessing in numpy + Pillow, matching ``edgeclip.data.transforms.Preprocess.torch_transform()``.

torchvision's ``Resize`` on a PIL image calls Pillow's ``Image.resize`` with the same filter, so the
resampled pixels are identical; the output size, centre-crop offsets, ``ToTensor`` scaling and
``Normalize`` follow torchvision's formulas. ``tests/test_runtime_preprocess.py`` checks the parity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.images import MAX_INPUT_SIZE
from edgeclip.core.modality import ModalityError, ModalitySpec, read_array, read_modality, select_bands

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
    """Resize (shorter side, or ``squash`` to a square), centre crop, scale to [0, 1], normalise -> CHW float32.

    ``modality``: a bundle for another input than RGB photos (a 1-channel thermal camera, a multispectral tile)
    records its :class:`~edgeclip.core.modality.ModalitySpec` and ``in_channels`` (what its files hold); its
    inputs are then read as that modality (:meth:`inputs`), never converted to RGB on the way."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "shortest"
    interpolation: str = "bicubic"
    modality: ModalitySpec | None = None
    in_channels: int | None = None
    lut: tuple | None = None  # the colour map of a ``colormap`` adapter, (256, 3), carried in preprocess.json

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
        modality, in_ch, lut = None, None, None
        if d.get("modality") is not None:
            modality = ModalitySpec.from_dict(d["modality"])
            in_ch = d.get("in_channels")
            if in_ch is not None and (not isinstance(in_ch, int) or isinstance(in_ch, bool) or in_ch < 1):
                raise EdgeClipError(f"preprocess.json: in_channels must be a positive integer, got {in_ch!r}")
            if modality.adapter == "colormap":
                lut = tuple(tuple(float(v) for v in row) for row in d.get("colormap_lut") or ())
                if len(lut) != 256 or any(len(row) != 3 for row in lut):
                    raise EdgeClipError("preprocess.json: a colormap modality needs its 256x3 colormap_lut")
        n = len(mean)
        if n < 1 or len(std) != n or min(std) <= 0 or (modality is None and n != 3):
            raise EdgeClipError(f"preprocess.json: bad size/mean/std ({size}, {mean}, {std})")
        return cls(size, mean, std, resize, interp, modality, in_ch, lut)  # type: ignore[arg-type]

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

    # ------------------------------------------------------------------ other modalities
    @property
    def channels(self) -> int:
        """The model's input channels."""
        return len(self.mean)

    def inputs(self, items: Sequence, max_pixels: int | None = None) -> np.ndarray:
        """(B, C, size, size) float32 model input of paths, encoded bytes, PIL images or (H, W[, C]) arrays: RGB
        photos for an RGB bundle, this bundle's modality otherwise."""
        from edgeclip.core.images import load_image, to_rgb

        if self.modality is None:
            imgs = [to_rgb(x) if isinstance(x, Image.Image) else load_image(x, max_pixels) for x in items]
            return self.batch(imgs)
        if not items:
            return np.zeros((0, self.channels, self.size, self.size), np.float32)
        return np.stack([self.modality_input(x, max_pixels) for x in items])

    def read(self, x, max_pixels: int | None = None) -> np.ndarray:
        """One input of the bundle's modality, decoded in its own depth and checked (channels, bands) but not yet
        resized: what a loop over many files reads per file, so a bad one is skipped and counted alone."""
        name = _input_name(x)
        if isinstance(x, Image.Image):
            arr = _pil_array(x)
        elif isinstance(x, np.ndarray):
            arr = x
        elif isinstance(x, (str, os.PathLike)):
            arr = read_array(x, max_pixels)
        else:
            arr = read_array(x if isinstance(x, (bytes, bytearray)) else x.getvalue(), max_pixels)
        arr = self._checked_channels(arr, name)
        select_bands(arr, self.modality, Path(name).name)  # too few bands: this file's error, here
        return arr

    def modality_input(self, x, max_pixels: int | None = None) -> np.ndarray:
        """One input of the bundle's modality -> (C, size, size) float32: read in its own bit depth and bands,
        checked against ``in_channels``, scaled, resized and cropped, adapted, normalised."""
        spec = self.modality
        name = _input_name(x)
        arr = self.read(x, max_pixels)
        a = read_modality(name, spec, arr)  # (C, H, W) in [0, 1]
        a = np.clip(self._resized(a, masked=spec.derive is None), 0.0, 1.0)
        if spec.adapter == "repeat" and a.shape[0] == 1:
            a = np.repeat(a, 3, axis=0)
        elif spec.adapter == "colormap":
            lut = np.asarray(self.lut, np.float32)
            a = lut[np.round(a[0] * 255).astype(np.int64)].transpose(2, 0, 1)
        if a.shape[0] != self.channels:
            raise ModalityError(
                f"{name}: {spec.name} input has {a.shape[0]} channels after its adapter, the model takes "
                f"{self.channels}"
            )
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((a - mean) / std, dtype=np.float32)

    def _resized(self, a: np.ndarray, masked: bool) -> np.ndarray:
        """Resize + centre crop of every channel. ``masked``: zeros are missing readings (depth holes) and only
        valid pixels are averaged, as in training."""

        def rs(c: np.ndarray) -> np.ndarray:
            return np.asarray(self.geometry(Image.fromarray(np.ascontiguousarray(c, np.float32), mode="F")))

        if masked and not a.all():
            valid = (a != 0).astype(np.float32)
            out = []
            for c, v in zip(a, valid):
                w = rs(v)
                out.append(np.where(w > 1e-3, rs(c * v) / np.maximum(w, 1e-3), 0.0))
            return np.stack(out).astype(np.float32)
        return np.stack([rs(c) for c in a]).astype(np.float32)

    def _checked_channels(self, arr: np.ndarray, name: str) -> np.ndarray:
        """The input's channels against what the bundle was trained on: a grey frame stored as 3 equal channels
        is taken as the 1 channel it is; anything else that differs is one clear error, never a conversion."""
        want = self.in_channels
        have = arr.shape[-1] if arr.ndim == 3 else 1
        if want is None or have == want or self.modality.bands is not None:
            return arr
        if want == 1 and have in (3, 4) and _grey(arr[..., :3]):
            return arr[..., :3].mean(-1).round().astype(arr.dtype)
        what = "an RGB photo? " if have in (3, 4) else ""
        raise ModalityError(
            f"{name}: this bundle reads {self.modality.name} input with {want} channel{'s' * (want != 1)}; "
            f"this one has {have} ({what}use a bundle for that input, or convert it yourself)"
        )


def _pil_array(img: Image.Image) -> np.ndarray:
    """A PIL image's pixels in their own depth (16-bit grey stays 16-bit; palette images become RGB)."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGB")
    return np.asarray(img)


def _grey(rgb: np.ndarray, tol: int = 4) -> bool:
    """A grey frame carried in 3 channels (a thermal JPEG saved as RGB, a grey video decoded to RGB, whose
    chroma rounding leaves a few levels): every channel within ``tol`` of the others."""
    a = rgb.astype(np.int32)
    return int(np.abs(a[..., 0] - a[..., 1]).max()) <= tol and int(np.abs(a[..., 0] - a[..., 2]).max()) <= tol


def _input_name(x) -> str:
    """How an input is named in an error: its path, else its type."""
    return str(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__
