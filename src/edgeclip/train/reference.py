"""Train the ``reference-lit`` teacher: an image tower locked to the frozen, real MiniLM text tower (LiT).

The result is a reference-lit checkpoint (``edgeclip.models.teachers.reference``) that loads like any CLIP teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from edgeclip.models.teachers.minilm import TEXT_DIM, embed_texts
from edgeclip.models.teachers.reference import save_reference
from edgeclip.zeroshot.text import text_classifier


class LiTModel(nn.Module):
    """Image tower + fixed class-text embeddings + learnable temperature."""

    def __init__(self, image_tower: nn.Module, text_emb: torch.Tensor, init_scale: float = 1 / 0.07):
        super().__init__()
        self.image_tower = image_tower
        self.register_buffer("text_emb", text_emb)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.image_tower(x), dim=-1)
        return self.logit_scale.clamp(max=math.log(100)).exp() * img @ self.text_emb.t()


def train_reference(
    data: str,
    out: str | Path,
    arch: str = "resnet18",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    img_size: int = 32,
    small_input: bool | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    resume: bool = False,
    devices: int = 1,
    accelerator: str = "auto",
    max_images: int = 0,
    val_data: str | None = None,
    head_hidden: int = 1024,
    stem_stride: int = 0,
    label_smoothing: float = 0.0,
    progress: bool = True,
) -> dict:
    """Train the image tower LiT-style against the frozen MiniLM class-prompt embeddings of ``data`` (ImageFolder)."""
    from edgeclip.data.memory import MemoryImages, augment_batch, normalize, preload
    from edgeclip.data.sources import labelled_source, open_source
    from edgeclip.models.student import Student
    from edgeclip.train.engine import TrainConfig, fit

    src, recs = labelled_source(data, "training the reference teacher", max_images, seed)
    classes = class_names(src.classes)
    text_emb = text_classifier(embed_texts, classes, templates)
    x, kept, skipped = preload(recs, img_size, progress=progress)
    labels = torch.tensor([recs[i].label for i in kept])
    small = img_size <= 64 if small_input is None else small_input
    tower = Student(
        arch, TEXT_DIM, head_hidden=head_hidden, small_input=small, img_size=img_size, stem_stride=stem_stride
    )
    model = LiTModel(tower, text_emb)
    pp = Preprocess(size=img_size, mean=CLIP_MEAN, std=CLIP_STD)
    pad = max(1, img_size // 8)

    def step(m, batch):
        img, y = batch
        logits = m(normalize(augment_batch(img, pad=pad), pp.mean, pp.std))
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    val = None
    if val_data:
        vsrc = open_source(val_data)
        vx, vkept, _ = preload(vsrc.records, img_size, progress=False)
        vy = torch.tensor([vsrc.records[i].label for i in vkept])
        val = (vx, vy)

    def on_epoch_end(m, epoch, rec):
        if val is None:
            return {}
        from edgeclip.zeroshot.evaluate import tensor_top1

        return {"val_top1": tensor_top1(m, normalize(val[0], pp.mean, pp.std), val[1])}

    def save(m, out_dir: Path, history):
        scale = float(m.logit_scale.detach().clamp(max=math.log(100)).exp())
        info = {
            "data": str(data),
            "classes": classes,
            "templates": list(templates),
            "n_train": len(kept),
            "skipped": len(skipped),
            "epochs": epochs,
            "arch": arch,
            "img_size": img_size,
            "final": history["epochs"][-1] if history["epochs"] else {},
        }
        save_reference(m.image_tower, out_dir / "teacher.pt", pp, scale, info)

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        devices=devices,
        accelerator=accelerator,
        warmup_epochs=min(1.0, epochs / 10),
    )
    hist = fit(
        cfg,
        model,
        MemoryImages(x, labels),
        step,
        out,
        resume=resume,
        save_fn=save,
        on_epoch_end=on_epoch_end if val is not None else None,
        progress=progress,
    )
    hist["skipped"] = skipped
    return hist
