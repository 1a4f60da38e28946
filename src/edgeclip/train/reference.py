"""Train the ``reference-lit`` teacher: an image tower locked to the frozen, real MiniLM text tower (LiT).

The result is a reference-lit checkpoint (``edgeclip.models.teachers.reference``) that loads like any CLIP teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from edgeclip.models.student import Student
from edgeclip.models.teachers.minilm import TEXT_DIM, embed_texts
from edgeclip.models.teachers.reference import save_reference
from edgeclip.train.engine import Task, TrainConfig, Trainer
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


@dataclass
class ReferenceTeacherConfig:
    data: str = ""
    arch: str = "resnet18"
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    img_size: int = 32
    small_input: bool | None = None
    head_hidden: int = 1024
    stem_stride: int = 0
    label_smoothing: float = 0.0
    max_images: int = 0
    val_data: str | None = None  # ImageFolder for zero-shot top-1 after each epoch (monitoring only)


class ReferenceTeacherTask(Task):
    """The LiT image tower against the frozen MiniLM class-prompt embeddings of an ImageFolder."""

    def __init__(self, cfg: ReferenceTeacherConfig, seed: int = 0, progress: bool = True):
        self.cfg, self.seed, self.progress = cfg, seed, progress

    def setup(self, trainer: Trainer) -> None:
        """Runs after the Trainer has seeded every RNG: the same seed builds the same tower."""
        from edgeclip.data.memory import MemoryImages, preload
        from edgeclip.data.sources import labelled_source, open_source

        c = self.cfg
        src, recs = labelled_source(c.data, "training the reference teacher", c.max_images, self.seed)
        self.classes = class_names(src.classes)
        x, kept, self.skipped = preload(recs, c.img_size, progress=self.progress)
        self.n_train = len(kept)
        labels = torch.tensor([recs[i].label for i in kept])
        small = c.img_size <= 64 if c.small_input is None else c.small_input
        tower = Student(
            arch=c.arch,
            embed_dim=TEXT_DIM,
            head_hidden=c.head_hidden,
            small_input=small,
            img_size=c.img_size,
            stem_stride=c.stem_stride,
        )
        self.model = LiTModel(tower, text_classifier(embed_texts, self.classes, c.templates))
        self.dataset = MemoryImages(x, labels)
        self.pp = Preprocess(size=c.img_size, mean=CLIP_MEAN, std=CLIP_STD)
        self.pad = max(1, c.img_size // 8)
        self.val = None
        if c.val_data:
            vsrc = open_source(c.val_data)
            vx, vkept, _ = preload(vsrc.records, c.img_size, progress=False)
            self.val = (vx, torch.tensor([vsrc.records[i].label for i in vkept]))

    def training_step(self, model, batch):
        from edgeclip.data.memory import augment_batch, normalize

        img, y = batch
        logits = model(normalize(augment_batch(img, pad=self.pad), self.pp.mean, self.pp.std))
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    def on_epoch_end(self, model, epoch, record):
        if self.val is None:
            return None
        from edgeclip.data.memory import normalize
        from edgeclip.zeroshot.evaluate import tensor_top1

        return {
            "val_top1": tensor_top1(model, normalize(self.val[0], self.pp.mean, self.pp.std), self.val[1])
        }

    def save(self, model, out_dir: Path, history: dict) -> None:
        c = self.cfg
        scale = float(model.logit_scale.detach().clamp(max=math.log(100)).exp())
        info = {
            "data": str(c.data),
            "classes": self.classes,
            "templates": list(c.templates),
            "n_train": self.n_train,
            "skipped": len(self.skipped),
            "epochs": len(history["epochs"]),
            "arch": c.arch,
            "img_size": c.img_size,
            "final": history["epochs"][-1] if history["epochs"] else {},
        }
        save_reference(model.image_tower, out_dir / "teacher.pt", self.pp, scale, info)


def train_reference(
    data: str,
    out: str | Path,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    resume: bool = False,
    devices: int = 1,
    accelerator: str = "auto",
    max_steps: int = 0,
    progress: bool = True,
    **task: Any,
) -> dict:
    """Train the reference-lit teacher on ``data`` (ImageFolder); ``task``: :class:`ReferenceTeacherConfig` keys
    (arch, templates, img_size, small_input, head_hidden, stem_stride, label_smoothing, max_images, val_data)."""
    from edgeclip.core.config import build_dataclass

    cfg = build_dataclass(ReferenceTeacherConfig, {"data": data, **task})
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        devices=devices,
        accelerator=accelerator,
        warmup_epochs=min(1.0, epochs / 10),
        max_steps=max_steps,
    )
    t = ReferenceTeacherTask(cfg, seed=seed, progress=progress)
    hist = Trainer(train, out, resume=resume, progress=progress).fit(t)
    hist["skipped"] = t.skipped
    return hist
