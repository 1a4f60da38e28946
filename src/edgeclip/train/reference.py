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

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, check_templates, class_names, fill
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
    # classes left out of training (their images and their prompts): the open-vocabulary protocol
    exclude_classes: list[str] = field(default_factory=list)
    # files that are not RGB photos, shown as RGB: ModalitySpec settings, e.g. {bands: rgb, scale: 3000}
    render: dict | None = None
    out: str = "runs/reference_teacher"
    train: dict = field(
        default_factory=dict
    )  # TrainConfig keys (epochs 10, batch 256, lr 2e-3, ... by default)

    def __post_init__(self) -> None:
        if not self.data:
            raise EdgeClipError("no training data given (an ImageFolder: --data or `data:`)")


REFERENCE_TRAIN = {"epochs": 10, "batch_size": 256, "lr": 2e-3, "weight_decay": 0.05}


def run_reference(cfg: ReferenceTeacherConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train the reference-lit teacher on ``cfg.data`` (ImageFolder) into ``cfg.out``; -> the history (with the
    images it skipped)."""
    from edgeclip.core.config import build_dataclass

    t = {**REFERENCE_TRAIN, **cfg.train}
    t.setdefault("warmup_epochs", min(1.0, t["epochs"] / 10))
    train = build_dataclass(TrainConfig, t, "train")
    task = ReferenceTeacherTask(cfg, seed=train.seed, progress=progress)
    hist = Trainer(train, cfg.out, resume=resume, progress=progress).fit(task)
    hist["skipped"] = task.skipped
    return hist


class ReferenceTeacherTask(Task):
    """The LiT image tower against the frozen MiniLM class-prompt embeddings of an ImageFolder."""

    def __init__(self, cfg: ReferenceTeacherConfig, seed: int = 0, progress: bool = True):
        self.cfg, self.seed, self.progress = cfg, seed, progress

    def setup(self, trainer: Trainer) -> None:
        """Runs after the Trainer has seeded every RNG: the same seed builds the same tower."""
        from edgeclip.data.memory import MemoryImages, preload
        from edgeclip.data.sources import labelled_source, open_source, rendered, without_classes

        c = self.cfg
        src, recs = labelled_source(c.data, "training the reference teacher", c.max_images, self.seed)
        names = class_names(src.classes)
        recs, self.classes = without_classes(recs, names, c.exclude_classes)
        recs = rendered(recs, c.render)
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
            vrecs, _ = without_classes(vsrc.records, class_names(vsrc.classes or []), c.exclude_classes)
            vrecs = rendered(vrecs, c.render)
            vx, vkept, _ = preload(vrecs, c.img_size, progress=False)
            self.val = (vx, torch.tensor([vrecs[i].label for i in vkept]))

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
        info = {"data": str(c.data), "classes": self.classes, "templates": list(c.templates)}
        if c.exclude_classes:
            info["excluded_classes"] = list(c.exclude_classes)
        if c.render:
            info["render"] = dict(c.render)
        save_tower(
            model,
            out_dir,
            self.pp,
            c,
            history,
            {**info, "n_train": self.n_train, "skipped": len(self.skipped)},
        )


def save_tower(model: LiTModel, out_dir: Path, pp: Preprocess, cfg, history: dict, info: dict) -> None:
    """The trained image tower as a reference-lit teacher (``teacher.pt``), with its learnt logit scale."""
    scale = float(model.logit_scale.detach().clamp(max=math.log(100)).exp())
    info = {
        **info,
        "epochs": len(history["epochs"]),
        "arch": cfg.arch,
        "img_size": cfg.img_size,
        "final": history["epochs"][-1] if history["epochs"] else {},
    }
    save_reference(model.image_tower, out_dir / "teacher.pt", pp, scale, info)


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

    train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed}
    train.update(devices=devices, accelerator=accelerator, max_steps=max_steps)
    cfg = build_dataclass(ReferenceTeacherConfig, {"data": data, **task, "out": str(out), "train": train})
    return run_reference(cfg, resume=resume, progress=progress)


# --------------------------------------------------------------------------- an open-vocabulary teacher
# the pairs a class image gets (CLIP's CIFAR prompts, a few): plain words, as a caption would say them
CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the small {}.",
)


@dataclass
class CaptionTeacherConfig:
    captions: str = ""  # a caption file (Flickr token.txt, COCO JSON, ...), its images found beside it
    images: str | None = None
    split: str | None = "train"
    val_split: str | None = "val"  # image->text Recall@K after each epoch (selection only on val)
    arch: str = "resnet18"
    img_size: int = 128
    small_input: bool | None = None
    head_hidden: int = 1024
    stem_stride: int = 0
    max_images: int = 0
    val_max_images: int = 500
    crop_scale: float = (
        0.0  # > 0: random resized crops of area [crop_scale, 1] + flips; 0: pad-and-crop + flips
    )
    # more pairs for the same tower: every image of these caption files (no split: keep them out of val/test)
    extra_captions: list[str] = field(default_factory=list)
    # ImageFolders (ROOT/<class>/<image>) as pairs: each image's captions are the templates filled with its class
    # name, and the images of one class are one group in the loss (UniCL: all of a class are positives, never
    # pushed apart as negatives)
    class_folders: list[str] = field(default_factory=list)
    class_templates: list[str] = field(
        default_factory=lambda: list(CLASS_TEMPLATES)
    )  # the prompts a class image is paired with
    class_max_images: int = 0  # > 0: a seeded random subset of each class folder
    # a reference-lit teacher (spec or file) of the same tower (arch, img_size, head) to start from: its image tower
    # and temperature, fine-tuned on these pairs (more data for a teacher that has stopped improving on its own)
    init: str | None = None
    out: str = "runs/caption_teacher"
    train: dict = field(
        default_factory=dict
    )  # TrainConfig keys (batch 128, lr 1e-3, weight decay 0.05 by default)

    def __post_init__(self) -> None:
        if not self.captions:
            raise EdgeClipError("no captions file given (`captions:`)")
        if not 0 <= self.crop_scale < 1:
            raise EdgeClipError(f"crop_scale must be in [0, 1) (0: pad-and-crop), got {self.crop_scale}")
        self.class_templates = check_templates(self.class_templates)
        if self.class_max_images < 0:
            raise EdgeClipError(f"class_max_images must be >= 0, got {self.class_max_images}")


class _CaptionPairs(torch.utils.data.Dataset):
    """(uint8 image, the index of one of its captions, drawn anew each time, its group in the loss)."""

    def __init__(self, images: torch.Tensor, caption_rows: list[list[int]], groups: torch.Tensor):
        self.images, self.rows, self.groups = images, caption_rows, groups

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        r = self.rows[i]
        return self.images[i], torch.tensor(r[int(torch.randint(len(r), ()))]), self.groups[i]


@dataclass
class _Pairs:
    """Every training pair of a caption teacher: images, their caption rows into ``texts``, their loss groups."""

    images: torch.Tensor
    rows: list[list[int]]
    texts: list[str]
    groups: torch.Tensor  # one id per image; images of one class share theirs
    counts: dict  # images kept per source
    skipped: list[str]
    summary: dict


def caption_pairs(c: CaptionTeacherConfig, seed: int = 0, progress: bool = True) -> _Pairs:
    """The pairs ``c`` names: its caption file's split, every image of ``extra_captions``, then each
    ``class_folders`` image under ``class_templates`` (class prompts stored once, shared by the class)."""
    from edgeclip.data.captions import held_out_photos, load_captions
    from edgeclip.data.memory import preload
    from edgeclip.data.sources import labelled_source

    cs = load_captions(c.captions, c.images, c.split)
    items = list(cs.items[: c.max_images] if c.max_images else cs.items)
    # the main file's other splits never come back in as extra pairs
    held_out = held_out_photos(c.captions, c.images, c.split, cs) if c.extra_captions else set()
    dropped = []
    for extra in c.extra_captions:
        for it in load_captions(extra, None, None).items:
            (dropped if it.path.resolve() in held_out else items).append(it)
    x, kept, skipped = preload([it.record() for it in items], c.img_size, progress=progress)
    skipped += [
        f"{it.path}: in a held-out split of {c.captions}, not used as an extra pair" for it in dropped
    ]
    texts, rows, counts = [], [], {"captions": 0}
    for i in kept:
        caps = items[i].captions
        rows.append(list(range(len(texts), len(texts) + len(caps))))
        texts += caps
        counts["captions"] += 1
    groups = list(range(len(rows)))  # a captioned image is its own group
    xs = [x]
    for folder in c.class_folders:
        src, recs = labelled_source(folder, "a class_folders entry", c.class_max_images, seed)
        cx, ckept, cskip = preload(recs, c.img_size, progress=progress)
        skipped += cskip
        first = len(texts)
        names = class_names(src.classes)
        texts += [fill(t, n) for n in names for t in c.class_templates]
        nt, base = len(c.class_templates), max(groups, default=-1) + 1
        for i in ckept:
            lab = recs[i].label
            rows.append(list(range(first + lab * nt, first + (lab + 1) * nt)))
            groups.append(base + lab)
        counts[str(folder)] = len(ckept)
        xs.append(cx)
    images = torch.cat(xs) if len(xs) > 1 else x
    return _Pairs(images, rows, texts, torch.tensor(groups), counts, skipped, cs.summary())


def caption_embeddings(texts: list[str], batch: int = 256) -> torch.Tensor:
    """(N, 384) normalised MiniLM embeddings of captions, in batches."""
    return torch.cat([embed_texts(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def _init_tower(tower, spec: str) -> float:
    """Load a reference-lit teacher's image tower into ``tower`` (same arch, input size and head, else one line);
    -> its logit scale, the temperature to go on from."""
    from edgeclip.core.checkpoint import read_checkpoint
    from edgeclip.models.base import load_weights
    from edgeclip.models.teachers.reference import REFERENCE_FORMAT

    path = Path(spec.split(":", 1)[1] if spec.startswith("reference-lit:") else spec)
    if not path.is_file():
        raise EdgeClipError(f"init: no reference-lit teacher at {path}")
    ck = read_checkpoint(path, REFERENCE_FORMAT, "reference-lit teacher")
    keys = ("arch", "embed_dim", "head_hidden", "img_size", "small_input")
    want = {k: tower.config.get(k) for k in keys}
    have = {k: ck["tower_config"].get(k) for k in keys}
    if have != want:
        raise EdgeClipError(f"init: {path} is a {have} tower, this run trains a {want} one")
    load_weights(tower, ck["state_dict"], path, "reference teacher tower")
    return float(ck["logit_scale"])


class CaptionTeacherTask(Task):
    """A reference-lit teacher that reads sentences: the image tower learns, by a symmetric contrastive (LiT) loss
    against the frozen MiniLM embeddings of the images' own captions, to land where its captions land; any text is
    then a query (Flickr8k's captions, not ten CIFAR class names)."""

    def __init__(self, cfg: CaptionTeacherConfig, seed: int = 0, progress: bool = True):
        self.cfg, self.seed, self.progress = cfg, seed, progress

    def setup(self, trainer: Trainer) -> None:
        c = self.cfg
        pairs = caption_pairs(c, self.seed, self.progress)
        self.skipped, self.counts, self.data_summary = pairs.skipped, pairs.counts, pairs.summary
        self.n_train, self.n_captions = len(pairs.rows), len(pairs.texts)
        # groups shared by several images (class folders): multi-positive targets; else plain CLIP targets
        self.grouped = len(set(pairs.groups.tolist())) < len(pairs.rows)
        small = c.img_size <= 64 if c.small_input is None else c.small_input
        tower = Student(
            c.arch,
            TEXT_DIM,
            head_hidden=c.head_hidden,
            small_input=small,
            img_size=c.img_size,
            stem_stride=c.stem_stride,
        )
        scale = 1 / 0.07
        if c.init:
            scale = _init_tower(tower, c.init)
        self.model = LiTModel(
            tower, caption_embeddings(pairs.texts), init_scale=scale
        )  # every training caption
        self.dataset = _CaptionPairs(pairs.images, pairs.rows, pairs.groups)
        self.pp = Preprocess(size=c.img_size, mean=CLIP_MEAN, std=CLIP_STD)
        self.pad = max(1, c.img_size // 8)
        self.val = self._val() if c.val_split else None
        self.fingerprint = {"captions": c.captions, "split": c.split, "arch": c.arch, "img_size": c.img_size}
        if c.extra_captions or c.class_folders:
            self.fingerprint.update(extra_captions=c.extra_captions, class_folders=c.class_folders)
        if c.init:
            self.fingerprint["init"] = c.init

    def _val(self):
        from edgeclip.data.captions import load_captions
        from edgeclip.data.memory import preload

        c = self.cfg
        vs = load_captions(c.captions, c.images, c.val_split)
        items = vs.items[: c.val_max_images] if c.val_max_images else vs.items
        vx, kept, _ = preload([it.record() for it in items], c.img_size, progress=False)
        texts, owner = [], []
        for j, i in enumerate(kept):
            texts += items[i].captions
            owner += [j] * len(items[i].captions)
        return vx, caption_embeddings(texts).numpy(), owner

    def training_step(self, model, batch):
        from edgeclip.data.memory import augment_batch, normalize, random_resized_crops

        img, idx, group = batch
        c = self.cfg
        aug = (
            random_resized_crops(img, c.img_size, (c.crop_scale, 1.0))
            if c.crop_scale
            else augment_batch(img, pad=self.pad)
        )
        x = normalize(aug, self.pp.mean, self.pp.std)
        a = F.normalize(model.image_tower(x), dim=-1)
        t = model.text_emb[idx]  # the batch's captions (normalised MiniLM embeddings)
        logits = model.logit_scale.clamp(max=math.log(100)).exp() * a @ t.t()
        y = torch.arange(len(a), device=a.device)
        if self.grouped:
            return grouped_contrastive(logits, group)
        loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)) / 2
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def on_epoch_end(self, model, epoch, record):
        if self.val is None:
            return None
        from edgeclip.data.memory import normalize
        from edgeclip.zeroshot.scores import retrieval

        vx, txt, owner = self.val
        was = model.training
        model.eval()
        emb = torch.cat(
            [
                model.image_tower(normalize(vx[i : i + 256], self.pp.mean, self.pp.std)).float()
                for i in range(0, len(vx), 256)
            ]
        )
        model.train(was)
        r = retrieval(emb.numpy(), txt, owner)
        return {f"val_{k}": r[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}

    def save(self, model, out_dir: Path, history: dict) -> None:
        c = self.cfg
        info = {
            "data": str(c.captions),
            "split": c.split,
            "kind": "caption-lit",
            "n_train": self.n_train,
            "n_captions": self.n_captions,
            "skipped": len(self.skipped),
        }
        if c.extra_captions or c.class_folders:
            info["sources"] = self.counts
        save_tower(model, out_dir, self.pp, c, history, info)


def grouped_contrastive(logits: torch.Tensor, group: torch.Tensor) -> dict:
    """The symmetric contrastive loss with every pair of one group a positive (UniCL, Yang et al. 2022): each
    row's target spreads evenly over its group's columns. With every group its own, it is CLIP's loss."""
    pos = (group[:, None] == group[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    loss = -(
        (target * F.log_softmax(logits, 1)).sum(1).mean()
        + (target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    )
    hit = pos[torch.arange(len(pos)), logits.argmax(1)]
    return {"loss": loss / 2, "acc": hit.mean()}


def train_caption_teacher(
    out: str | Path, train: dict, resume: bool = False, progress: bool = True, **task
) -> dict:
    """Train the open-vocabulary reference teacher on a caption set; ``task``: :class:`CaptionTeacherConfig` keys,
    ``train``: :class:`TrainConfig` keys."""
    from edgeclip.core.config import build_dataclass

    return run_caption_teacher(
        build_dataclass(CaptionTeacherConfig, {**task, "out": str(out), "train": train}), resume, progress
    )


def run_caption_teacher(cfg: CaptionTeacherConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train the open-vocabulary reference teacher on a caption set into ``cfg.out``; -> the history."""
    from edgeclip.core.config import build_dataclass

    tcfg = build_dataclass(
        TrainConfig, {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, **cfg.train}, "train"
    )
    t = CaptionTeacherTask(cfg, seed=tcfg.seed, progress=progress)
    return Trainer(tcfg, cfg.out, resume=resume, progress=progress).fit(t)
