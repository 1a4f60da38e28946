"""Small-image datasets held in memory as uint8 tensors, with augmentation done per batch on the device.

For CIFAR-sized data this is many times faster than decoding and augmenting each image with PIL,
on CPU and GPU alike. Unreadable files are skipped and counted, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeclip.core.errors import ImageLoadError
from edgeclip.data.sources import ImageRecord


def resize_center(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    lb, t = (w - size) // 2, (h - size) // 2
    return img.crop((lb, t, lb + size, t + size))


def preload(
    records: Sequence[ImageRecord], size: int, progress: bool = True
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode ``records`` into a (N,3,size,size) uint8 tensor. Returns (images, kept indices, skipped reasons)."""
    arrs, kept, skipped = [], [], []
    it = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc=f"loading {len(records)} images", mininterval=2.0, leave=False)
    for i, r in enumerate(it):
        try:
            img = r.load()
        except ImageLoadError as e:
            skipped.append(str(e))
            continue
        arrs.append(np.asarray(resize_center(img, size), dtype=np.uint8))
        kept.append(i)
    if not arrs:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), kept, skipped
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    return x, kept, skipped


class MemoryImages(torch.utils.data.Dataset):
    """(uint8 image, target) pairs; ``target`` is any tensor indexed alongside (label, embedding, ...)."""

    def __init__(self, images: torch.Tensor, *targets: torch.Tensor):
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return (self.images[i], *[t[i] for t in self.targets])


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B,3,H,W) -> normalised float."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def augment_batch(
    x: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with reflection padding + horizontal flip on a uint8/float batch (B,C,H,W)."""
    B, C, H, W = x.shape
    if pad:
        xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        rows = (oy.view(B, 1) + torch.arange(H).view(1, H)).to(x.device)  # (B,H)
        cols = (ox.view(B, 1) + torch.arange(W).view(1, W)).to(x.device)  # (B,W)
        idx_r = rows.view(B, 1, H, 1).expand(B, C, H, xp.shape[-1])
        xp = xp.gather(2, idx_r)
        idx_c = cols.view(B, 1, 1, W).expand(B, C, H, W)
        x = xp.gather(3, idx_c)
    else:
        x = x.float()
    if flip:
        f = (torch.rand(B, generator=generator) < 0.5).to(x.device).view(B, 1, 1, 1)
        x = torch.where(f, x.flip(3), x)
    return x


def random_resized_crops(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip on a batch, drawn from torch's RNG (the Trainer seeds it per epoch): each
    image a box of area in ``scale`` (of the image) and aspect in ``ratio``, resized to ``size``."""
    B = x.shape[0]
    area = torch.empty(B).uniform_(*scale)
    logr = torch.empty(B).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = (area * logr.exp()).sqrt().clamp(max=1.0)
    h = (area / logr.exp()).sqrt().clamp(max=1.0)
    x0, y0 = torch.rand(B) * (1 - w), torch.rand(B) * (1 - h)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], 1).to(x.device)
    return crop_views(x, boxes, (torch.rand(B) < 0.5).to(x.device), size)


def crop_views(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Batched crop-and-resize of relative ``boxes`` (B,4: x0,y0,x1,y1) + flips (B,) with roi_align."""
    from torchvision.ops import roi_align

    B, C, H, W = x.shape
    xf = x.float()
    scale = torch.tensor([W, H, W, H], dtype=xf.dtype, device=x.device)
    rois = torch.cat([torch.arange(B, device=x.device, dtype=xf.dtype).view(B, 1), boxes.to(xf) * scale], 1)
    out = roi_align(xf, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    f = flips.to(x.device).bool().view(B, 1, 1, 1)
    return torch.where(f, out.flip(3), out)
