"""Decode any image file into RGB (or a raw array) with one clear error on failure.

Handles CMYK, L/LA/P/RGBA, 16-bit and float images, EXIF rotation, and refuses truncated files
instead of silently padding them with grey.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgeclip.core.errors import ImageLoadError

ImageFile.LOAD_TRUNCATED_IMAGES = False

# The pixel budget: an image is measured from its header, before any pixel is decoded, so a 48 KB PNG that
# claims 20000 x 20000 pixels never allocates its 1.2 GB. 40 Mpx covers any camera photo; override with
# EDGECLIP_MAX_PIXELS or max_pixels=. A JPEG over the budget is decoded at 1/2, 1/4 or 1/8 scale (draft).
DEFAULT_MAX_PIXELS = 40_000_000

# Extreme aspect ratios: a model resizes an image's short side to its input size, so a 1 x 20000 PNG (164 bytes,
# 20,000 px) would become 160 x 3,200,000 (1.5 GB of RGB) before the centre crop. The rule: an image whose long
# side is more than MAX_ASPECT times its short side is refused in one line, from its header, before decoding.
# 50:1 keeps every camera photo and panorama (a 360-degree strip is about 8:1) and bounds a resized image at
# 50 x size^2 pixels.
MAX_ASPECT = 50
# The largest model input side a bundle or checkpoint may ask for (CLIP towers use 224-448; SigLIP up to 512):
# a preprocess.json that says 40000 is refused before any image is resized to it.
MAX_INPUT_SIZE = 2048

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}


def max_pixels() -> int:
    v = os.environ.get("EDGECLIP_MAX_PIXELS")
    try:
        return int(v) if v else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ImageLoadError(f"EDGECLIP_MAX_PIXELS must be an integer, got {v!r}") from None


# Pillow's own guard stays on behind ours, for headers beyond any budget (it refuses at twice this)
Image.MAX_IMAGE_PIXELS = 1_000_000_000

Source = str | os.PathLike | bytes | io.BytesIO


def _check_budget(img: Image.Image, name: str, budget: int) -> None:
    """Refuse (or, for JPEG, draft-decode) an image whose header claims more pixels than ``budget``."""
    w, h = img.size
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageLoadError(
            f"image {name} is {w} x {h}: an aspect ratio over {MAX_ASPECT}:1 is refused (resizing its short side "
            "to the model's input would make its long side too large)"
        )
    frames = getattr(img, "n_frames", 1) if img.format == "TIFF" else 1
    if w * h * frames <= budget:
        return
    if img.format == "JPEG":
        for scale in (2, 4, 8):
            if (w // scale) * (h // scale) <= budget:
                img.draft("RGB", (w // scale, h // scale))
                return
    raise ImageLoadError(
        f"image {name} is {w} x {h}{f' x {frames} pages' if frames > 1 else ''} = {w * h * frames / 1e6:.0f} Mpx, "
        f"over the pixel budget of {budget / 1e6:.0f} Mpx (EDGECLIP_MAX_PIXELS)"
    )


def _open(src: Source, budget: int | None = None) -> Image.Image:
    name = "<bytes>" if isinstance(src, (bytes, io.BytesIO)) else str(src)
    try:
        if isinstance(src, bytes):
            src = io.BytesIO(src)
        elif not isinstance(src, io.BytesIO):
            p = Path(src)
            if not p.exists():
                raise ImageLoadError(f"image not found: {p}")
            if p.is_dir():
                raise ImageLoadError(f"expected an image file, got a directory: {p}")
            if p.stat().st_size == 0:
                raise ImageLoadError(f"empty image file: {p}")
        img = Image.open(src)  # reads the header only
        _check_budget(img, name, budget or max_pixels())
        img.load()  # force full decode so truncation is detected here
        return img
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"not a readable image: {name}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt payloads
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"corrupt or truncated image {name}: {msg}") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(f"image {name} claims over 2,000 Mpx: too large to decode safely") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled, alpha is flattened on white)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not make an image unreadable
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(_to_uint8(arr)).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    out = (np.clip(np.where(finite, arr, lo), lo, hi) - lo) / (hi - lo) * 255.0
    return out.round().astype(np.uint8)


def load_image(src: Source, max_pixels: int | None = None) -> Image.Image:
    """Load ``src`` as an RGB PIL image, or raise :class:`ImageLoadError` with one clear line.
    ``max_pixels``: the pixel budget (default: EDGECLIP_MAX_PIXELS or 40 Mpx), checked before decoding."""
    return to_rgb(_open(src, max_pixels))


def load_array(src: Source, max_pixels: int | None = None) -> np.ndarray:
    """Load ``src`` without colour conversion: HxW or HxWxC array in its own dtype (e.g. uint16 depth).

    Multi-band TIFFs that PIL cannot open are read with ``tifffile`` when it is installed.
    """
    try:
        img = _open(src, max_pixels)
    except ImageLoadError:
        if isinstance(src, (str, os.PathLike)) and str(src).lower().endswith((".tif", ".tiff")):
            try:
                import tifffile  # optional

                return np.asarray(tifffile.imread(str(src)))
            except ImportError:
                pass
            except Exception as e:  # pragma: no cover - depends on file
                raise ImageLoadError(f"corrupt TIFF {src}: {e}") from None
        raise
    frames = []
    try:
        n = getattr(img, "n_frames", 1)
    except Exception:
        n = 1
    if n > 1 and img.format == "TIFF":  # multi-page TIFF = multi-band image
        for i in range(n):
            img.seek(i)
            frames.append(np.asarray(img))
        return np.stack(frames, axis=-1)
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "P":
        img = img.convert("RGB")
    return np.asarray(img)
