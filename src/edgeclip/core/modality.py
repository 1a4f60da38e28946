"""What an input modality is, torch-free: how a file of it is read (8/16-bit maps, multi-band GeoTIFFs), which of
its bands are used (named band sets of a sensor), how it is scaled to [0, 1] and given the channels a student
needs. Training (``data.pairs``), export (the bundle records the spec) and the device runtime read modalities
through this one module, so a 13-band tile or a 1-channel thermal frame means the same thing everywhere.

    spec = ModalitySpec("swir", bands="swir", scale=5000)        # Sentinel-2 B11, B12, B8A; reflectance x1e4/5000
    x = read_modality("Forest_1031.tif", spec)                     # (3, 64, 64) float32 in [0, 1]
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.images import load_array

ADAPTERS = ("none", "repeat", "colormap", "conv")
DERIVATIONS = ("luminance", "bands")  # computed from the primary's image: its luma; other bands of its file


class ModalityError(EdgeClipError):
    """An input that cannot be used as this modality (band count, channels, size, all-zero map, unreadable)."""


# ------------------------------------------------------------------------------------------ band sets
# The band order of a sensor's files, and named sets of bands in it. EuroSAT's Sentinel-2 GeoTIFFs hold 13 bands
# in the order B01..B08, B09, B10, B11, B12 and B8A last.
SENSORS: dict[str, list[str]] = {
    "sentinel2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"],
}
BAND_SETS: dict[str, list[str]] = {
    "rgb": ["B04", "B03", "B02"],  # true colour
    "nir": ["B08"],
    "swir": ["B11", "B12", "B8A"],
    "false_colour": ["B08", "B04", "B03"],  # NIR, red, green: vegetation red
    "swir_composite": ["B12", "B8A", "B04"],  # SWIR2, narrow NIR, red: land/water, burn scars
}


def band_indices(bands: str | Sequence[str | int], sensor: str = "sentinel2") -> list[int]:
    """File channel indices of ``bands``: a named set (``swir``), band names (``["B08", "B04"]``) or indices."""
    if sensor not in SENSORS:
        raise EdgeClipError(f"unknown sensor {sensor!r} (known: {', '.join(SENSORS)})")
    order = SENSORS[sensor]
    if isinstance(bands, str):
        if bands not in BAND_SETS:
            raise EdgeClipError(f"unknown band set {bands!r} (named sets: {', '.join(BAND_SETS)})")
        bands = BAND_SETS[bands]
    if not bands:
        raise EdgeClipError("an empty band list")
    out = []
    for b in bands:
        if isinstance(b, bool) or not isinstance(b, (int, str)):
            raise EdgeClipError(f"a band is a name ({order[0]}, ...) or a channel index, got {b!r}")
        if isinstance(b, int):
            if b < 0:
                raise EdgeClipError(f"band index {b} is negative")
            out.append(b)
        elif b in order:
            out.append(order.index(b))
        else:
            raise EdgeClipError(f"unknown {sensor} band {b!r} (bands: {', '.join(order)})")
    return out


# ------------------------------------------------------------------------------------------ the spec
@dataclass
class ModalitySpec:
    """How one modality is read, scaled to [0, 1], adapted to the student and normalised.

    ``scale``: ``"auto"`` (8-bit: /255; wider integers and floats: min-max over the valid, non-zero
    pixels of each image), ``"minmax"``, or a number (e.g. 10000 = depth in mm over a 10 m range, or 3000 =
    Sentinel-2 reflectance x 1e4 clipped at 0.3).
    ``channels``: ``"auto"`` keeps the file's channels; ``1`` averages a colour-coded map to one.
    ``bands``: the file bands this modality uses (a named set of ``sensor`` such as ``rgb``, ``nir``, ``swir``,
    ``false_colour``; band names; or channel indices); None: all of them.
    ``mean`` / ``std``: per-channel normalisation after the adapter (None: measured on the training data).
    """

    name: str
    scale: object = "auto"
    channels: object = "auto"
    adapter: str = "repeat"
    colormap: str = "turbo"
    derive: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    allow_resize: bool = False  # a map of another size than its RGB: resize instead of skipping
    bands: object = None
    sensor: str = "sentinel2"

    def __post_init__(self):
        if self.adapter not in ADAPTERS:
            raise EdgeClipError(
                f"modality {self.name}: unknown adapter {self.adapter!r} ({', '.join(ADAPTERS)})"
            )
        if self.derive is not None and self.derive not in DERIVATIONS:
            raise EdgeClipError(
                f"modality {self.name}: unknown derivation {self.derive!r} ({', '.join(DERIVATIONS)})"
            )
        if not (
            self.scale in ("auto", "minmax")
            or (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool) and self.scale > 0)
        ):
            raise EdgeClipError(
                f"modality {self.name}: scale must be 'auto', 'minmax' or a positive number, got {self.scale!r}"
            )
        if self.bands is not None:
            try:
                band_indices(self.bands, self.sensor)
            except EdgeClipError as e:
                raise EdgeClipError(f"modality {self.name}: {e}") from None
        if self.derive == "bands" and self.bands is None:
            raise EdgeClipError(f"modality {self.name}: derive 'bands' needs `bands` (e.g. swir)")
        if self.adapter == "colormap":
            import matplotlib

            if self.colormap not in matplotlib.colormaps:
                raise EdgeClipError(f"modality {self.name}: unknown matplotlib colour map {self.colormap!r}")

    @property
    def band_index(self) -> list[int] | None:
        return None if self.bands is None else band_indices(self.bands, self.sensor)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModalitySpec:
        from edgeclip.core.config import build_dataclass

        return build_dataclass(
            cls, d, f"modality {d.get('name', '?')}" if isinstance(d, dict) else "modality"
        )


# ------------------------------------------------------------------------------------------ reading
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_array(src, max_pixels: int | None = None) -> np.ndarray:
    """A modality file (a path, or its encoded bytes) as HxW or HxWxC array in its own dtype. TIFFs are read with
    tifffile (multi-band, contiguous or planar: the band axis is the smallest one and is moved last), their
    declared size checked against the pixel budget before any decoding."""
    if isinstance(src, (bytes, bytearray)):
        if bytes(src[:4]) in TIFF_MAGIC:
            return _read_tiff(io.BytesIO(bytes(src)), "<bytes>", max_pixels)
        return load_array(bytes(src), max_pixels)
    if Path(src).suffix.lower() in (".tif", ".tiff"):
        if not Path(src).is_file():
            raise ImageLoadError(f"image not found: {src}")
        return _read_tiff(str(src), src, max_pixels)
    return load_array(src, max_pixels)


def _read_tiff(src, name, max_pixels: int | None) -> np.ndarray:
    import logging

    import tifffile

    from edgeclip.core.images import max_pixels as default_budget

    budget = max_pixels or default_budget()
    quiet = logging.getLogger("tifffile")
    was = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a broken file is reported once, here, not also as tifffile warnings
    try:
        with tifffile.TiffFile(src) as tf:
            shape = tuple(tf.series[0].shape) if tf.series else ()
            plane = sorted(shape)[-2:] if len(shape) >= 2 else shape
            if plane and int(np.prod(plane)) > budget:
                raise ImageLoadError(
                    f"TIFF {name} declares {shape}: over the pixel budget of {budget / 1e6:.0f} Mpx "
                    "(EDGECLIP_MAX_PIXELS)"
                )
            a = np.asarray(tf.asarray())
    except ImageLoadError:
        raise
    except Exception as e:
        raise ImageLoadError(
            f"corrupt or unreadable TIFF {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    finally:
        quiet.setLevel(was)
    if a.size == 0:
        raise ImageLoadError(f"corrupt or unreadable TIFF {name}: no image data in it")
    a = np.squeeze(a)
    if a.ndim == 3 and int(np.argmin(a.shape)) == 0:
        a = np.moveaxis(a, 0, -1)
    if a.ndim not in (2, 3):
        raise ImageLoadError(f"{name}: expected a 2-D or multi-band image, got an array of shape {a.shape}")
    return a


def select_bands(arr: np.ndarray, spec: ModalitySpec, name: str) -> np.ndarray:
    """The spec's bands of an HxW(xC) array (all of them when it names none)."""
    idx = spec.band_index
    if idx is None:
        return arr
    n = arr.shape[-1] if arr.ndim == 3 else 1
    if max(idx) >= n:
        what = f"band set {spec.bands!r}" if isinstance(spec.bands, str) else f"bands {spec.bands}"
        raise ModalityError(
            f"{name}: {n} band{'s' * (n != 1)}, but modality {spec.name}'s {what} needs band {max(idx) + 1} "
            f"({spec.sensor} order)"
        )
    return arr[..., idx] if arr.ndim == 3 else arr[..., None]


def scale_array(arr: np.ndarray, spec: ModalitySpec, name: str) -> np.ndarray:
    """HxW or HxWxC array of any dtype -> (C, H, W) float32 in [0, 1], by the spec's scale and channels."""
    a = arr if arr.ndim == 3 else arr[..., None]
    dtype = a.dtype
    a = a.astype(np.float32)
    a = np.where(np.isfinite(a), a, 0.0)
    if not np.any(a):
        raise ModalityError(f"{name}: all-zero {spec.name} map")
    if isinstance(spec.scale, (int, float)):
        a = np.clip(a / float(spec.scale), 0.0, 1.0)
    elif spec.scale == "auto" and dtype == np.uint8:
        a = a / 255.0
    else:  # min-max per band over valid (non-zero) pixels; zeros (no reading) stay 0
        out = np.zeros_like(a)
        for c in range(a.shape[-1]):
            band = a[..., c]
            valid = band != 0
            if not valid.any():
                continue
            lo, hi = float(band[valid].min()), float(band[valid].max())
            out[..., c] = np.where(valid, (band - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
        a = out
    a = a.transpose(2, 0, 1)
    if spec.channels == 1 and a.shape[0] > 1:
        a = a[:3].mean(0, keepdims=True)
    elif spec.channels not in ("auto", 1, None) and a.shape[0] != int(spec.channels):
        raise ModalityError(f"{name}: {spec.name} has {a.shape[0]} channels, expected {spec.channels}")
    return np.ascontiguousarray(a, dtype=np.float32)


def read_modality(path: str | Path, spec: ModalitySpec, arr: np.ndarray | None = None) -> np.ndarray:
    """One file as modality ``spec``: read (or ``arr``, already read), its bands selected, scaled -> (C, H, W)
    float32 in [0, 1]. Raises :class:`ModalityError` / ImageLoadError with one line."""
    a = read_array(path) if arr is None else arr
    return scale_array(select_bands(a, spec, Path(path).name), spec, Path(path).name)


def to_uint8_image(x01: np.ndarray):
    """A (C, H, W) [0, 1] array as an 8-bit PIL image (3 channels: RGB; 1: L) - how a band set is shown to an
    RGB model or a person."""
    from PIL import Image

    if x01.shape[0] not in (1, 3):
        raise ModalityError(f"an image shows 1 or 3 bands, not {x01.shape[0]}")
    a = (np.clip(x01, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")


def render_rgb(path: str | Path, spec: ModalitySpec):
    """A file shown as an 8-bit RGB PIL image through ``spec`` (e.g. a Sentinel-2 tile's ``rgb`` band set): what
    an RGB teacher is given. A file that cannot be shown so raises ImageLoadError, as any unreadable image."""
    try:
        return to_uint8_image(read_modality(path, spec))
    except ModalityError as e:
        raise ImageLoadError(str(e)) from None


def rendering_key(spec: ModalitySpec) -> str:
    """What makes two renderings of one file differ (joined to its cache key)."""
    return f"bands={','.join(map(str, spec.band_index or []))};scale={spec.scale};sensor={spec.sensor}"
