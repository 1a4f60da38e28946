"""Preprocessing as data (a small dict stored in every checkpoint and bundle) and augmented views.

Augmented views are *deterministic*: view ``v`` of the image with cache key ``k`` always uses the
same crop box (relative coordinates) and flip, so a cached teacher embedding of view ``v`` and the
student's input for view ``v`` show exactly the same pixels, whatever the two input sizes are.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass

from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """Resize (shorter side) + centre crop to ``size``, then normalise. ``resize='squash'`` skips the crop."""

    size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize: str = "shortest"  # shortest | squash
    interpolation: str = "bicubic"

    def __post_init__(self):
        from edgeclip.core.errors import EdgeClipError
        from edgeclip.core.images import MAX_INPUT_SIZE

        try:
            size = int(self.size)
        except (TypeError, ValueError):
            raise EdgeClipError(
                f"preprocessing: input size must be a whole number, got {self.size!r}"
            ) from None
        if not 0 < size <= MAX_INPUT_SIZE or size != self.size:
            raise EdgeClipError(f"preprocessing: input size {self.size} is outside 1..{MAX_INPUT_SIZE}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", CLIP_MEAN)), tuple(d.get("std", CLIP_STD))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        mean, std = ",".join(f"{m:.4f}" for m in self.mean), ",".join(f"{s:.4f}" for s in self.std)
        return f"{self.resize}-{self.size}-{self.interpolation}-m{mean}-s{std}"

    def torch_transform(self):
        from torchvision import transforms as T

        interp = getattr(T.InterpolationMode, self.interpolation.upper())
        if self.resize == "squash":
            geo = [T.Resize((self.size, self.size), interpolation=interp, antialias=True)]
        else:
            geo = [T.Resize(self.size, interpolation=interp, antialias=True), T.CenterCrop(self.size)]
        return T.Compose(geo + [T.ToTensor(), T.Normalize(self.mean, self.std)])


@dataclass
class ViewSpec:
    """How augmented view ``v >= 1`` is drawn (view 0 is always the plain image)."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return {"scale": list(self.scale), "ratio": list(self.ratio), "flip": self.flip, "seed": self.seed}


def view_params(key: str, view: int, spec: ViewSpec) -> tuple[tuple[float, float, float, float], bool]:
    """Relative crop box (x0, y0, x1, y1) and flip flag of ``view`` of the image with cache key ``key``."""
    if view == 0:
        return (0.0, 0.0, 1.0, 1.0), False
    digest = hashlib.sha256(f"{spec.seed}|{view}|{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    for _ in range(10):
        area = rng.uniform(*spec.scale)
        logr = rng.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1]))
        ar = math.exp(logr)
        w, h = math.sqrt(area * ar), math.sqrt(area / ar)
        if w <= 1 and h <= 1:
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            return (x0, y0, x0 + w, y0 + h), bool(spec.flip and rng.random() < 0.5)
    return (0.0, 0.0, 1.0, 1.0), bool(spec.flip and rng.random() < 0.5)


def apply_view(img: Image.Image, box: tuple[float, float, float, float], flip: bool) -> Image.Image:
    if box != (0.0, 0.0, 1.0, 1.0):
        W, H = img.size
        px = (
            round(box[0] * W),
            round(box[1] * H),
            max(round(box[2] * W), round(box[0] * W) + 1),
            max(round(box[3] * H), round(box[1] * H) + 1),
        )
        img = img.crop(px)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def grid_boxes(n: int) -> list[tuple[float, float, float, float]]:
    """An n x n grid of relative boxes, row-major."""
    return [(c / n, r / n, (c + 1) / n, (r + 1) / n) for r in range(n) for c in range(n)]
