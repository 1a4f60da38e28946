"""A small real-image dataset that edgeclip draws itself (for ``make demo`` and tests without ../shared).

Coloured shapes on textured backgrounds, saved as JPEG in an ImageFolder layout. Class names are
plain English ("circle", "triangle", ...) so the real MiniLM text tower can name them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS = [
    (220, 40, 40),
    (40, 160, 60),
    (40, 80, 220),
    (230, 200, 40),
    (160, 60, 200),
    (240, 130, 30),
    (30, 30, 30),
    (250, 250, 250),
]


def _star(cx, cy, r, n=5):
    pts = []
    for i in range(2 * n):
        a = math.pi / n * i - math.pi / 2
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(shape: str, size: int, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(60, 200) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 4)):  # background clutter
        x, y = rng.randint(0, size), rng.randint(0, size)
        d.line(
            [(x, y), (rng.randint(0, size), rng.randint(0, size))],
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
            width=1,
        )
    colour = rng.choice([c for c in COLOURS if sum(abs(a - b) for a, b in zip(c, bg)) > 120] or COLOURS)
    r = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    elif shape == "square":
        a = rng.uniform(0, math.pi / 2)
        d.polygon(
            [
                (cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2))
                for k in range(4)
            ],
            fill=colour,
        )
    elif shape == "triangle":
        a = rng.uniform(0, 2 * math.pi)
        d.polygon(
            [
                (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                for k in range(3)
            ],
            fill=colour,
        )
    elif shape == "star":
        d.polygon(_star(cx, cy, r), fill=colour)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
        raise ValueError(shape)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img


def make_shapes(
    root: str | Path,
    n_train: int = 150,
    n_test: int = 40,
    size: int = 48,
    shapes: Sequence[str] = SHAPES,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``root/train/<shape>/*.jpg`` and ``root/test/<shape>/*.jpg``; idempotent."""
    root = Path(root)
    done = root / ".complete"
    out = {"train": root / "train", "test": root / "test"}
    if done.exists():
        return out
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for s in shapes:
            d = root / split / s
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(s, size, rng).save(d / f"{i:05d}.jpg", quality=92)
    done.write_text("ok\n")
    return out
