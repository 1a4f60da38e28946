"""EdgeVL's data step, shared by every stage: the paired dataset opened, filtered (classes, curation manifest,
max_images), the teacher's targets for the RGB images cached, every modality preloaded; and the mixed-batch
knowledge-distillation term (every modality of the same pairs, same crop and flip, through the one student)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.core.config import build_dataclass
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import class_names
from edgeclip.data.memory import crop_views
from edgeclip.data.pairs import (
    PairTensors,
    default_specs,
    fill_stats,
    normalize_modality,
    open_pairs,
    preload_pairs,
)
from edgeclip.data.transforms import view_params
from edgeclip.models.pair import PairStudent
from edgeclip.models.teachers import check_same_teacher
from edgeclip.train.curate import apply_manifest, load_manifest, teacher_embeddings
from edgeclip.train.engine import TrainConfig


@dataclass
class PairDataConfig:
    teacher: str = ""
    data: str = ""
    out: str = "runs/edgevl"
    modalities: list[str] | None = None
    primary: str | None = None
    derive: dict[str, str] = field(default_factory=dict)  # e.g. {"mono": "luminance"}
    modality: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-modality ModalitySpec settings
    split: str | None = None  # only the pairs of this split (splits.json or train/val/test folders)
    manifest: str | None = None  # curation manifest: train on its kept pairs
    classes: list[str] | None = None  # only pairs of these (folder) classes: the unseen-class protocol
    cache: str | None = None  # teacher-embedding cache folder (default OUT/cache)
    views: int = 1
    max_images: int = 0
    seed: int = 0
    strict: bool = False


@dataclass
class Prepared:
    ps: Any
    specs: dict
    data: PairTensors
    targets: torch.Tensor  # (N, V, D)
    boxes: torch.Tensor  # (N, V, 4)
    flips: torch.Tensor  # (N, V)
    fkeys: list[str]
    pseudo: torch.Tensor | None
    size: int
    info: dict


def prepare_pairs(
    cfg: PairDataConfig, teacher, size: int, primary_stats=None, progress: bool = False
) -> Prepared:
    """Open, filter (classes, manifest, max_images), cache teacher targets, and preload the pairs."""
    if not cfg.data:
        raise EdgeClipError("no training data given (--data or `data:` in the config)")
    ps = open_pairs(cfg.data, cfg.modalities, cfg.primary, cfg.derive, cfg.split)
    info: dict[str, Any] = {"pairs_found": len(ps), "skipped_unpaired": len(ps.skipped)}
    if cfg.classes:
        if not ps.classes:
            raise EdgeClipError("`classes` needs class sub-folders in the data")
        names = class_names(ps.classes)
        bad = [c for c in cfg.classes if c not in names and c not in ps.classes]
        if bad:
            raise EdgeClipError(f"unknown class {bad[0]!r} (have: {', '.join(names)})")
        want = {i for i, (c, n) in enumerate(zip(ps.classes, names)) if c in cfg.classes or n in cfg.classes}
        ps = ps.subset([i for i, r in enumerate(ps.records) if r.label in want])
        info["classes"] = list(cfg.classes)
    pseudo_map = None
    if cfg.manifest:
        man = load_manifest(cfg.manifest)
        check_same_teacher(man["teacher"], teacher, f"manifest {cfg.manifest}")
        ps, pseudo_map, missing = apply_manifest(ps, man)
        info.update(manifest=cfg.manifest, manifest_missing=missing, manifest_labels=man["labels"])
    if cfg.max_images and len(ps) > cfg.max_images:
        idx = sorted(random.Random(cfg.seed).sample(range(len(ps)), cfg.max_images))
        ps = ps.subset(idx)
    cache_dir = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"
    specs = default_specs(ps, cfg.modality)
    cache, fkeys, ok = teacher_embeddings(
        ps, teacher, cache_dir, cfg.views, progress=progress, primary_spec=specs[ps.primary]
    )
    info["skipped_unreadable_rgb"] = len(ps) - len(ok)
    fk_by_key = {ps.records[i].key: k for i, k in zip(ok, fkeys)}
    ps = ps.subset(ok)
    data = preload_pairs(ps, specs, size, strict=cfg.strict, progress=progress)
    info["skipped_bad_pairs"] = len(data.skipped) - len(ps.skipped)
    info["skipped_examples"] = data.skipped[:20]
    info["n_train"] = len(data)
    fill_stats(specs, data, ps.primary, *(primary_stats or (teacher.mean, teacher.std)))
    fkeys = [fk_by_key[k] for k in data.keys]
    V = cache.views
    targets = cache.targets(fkeys)
    vp = [[view_params(k, v, cache.view_spec) for v in range(V)] for k in fkeys]
    boxes = torch.tensor([[p[0] for p in row] for row in vp], dtype=torch.float32)
    flips = torch.tensor([[p[1] for p in row] for row in vp])
    pseudo = torch.tensor([pseudo_map[k] for k in data.keys]) if pseudo_map is not None else None
    return Prepared(ps, specs, data, targets, boxes, flips, fkeys, pseudo, size, info)


def raw_channels(p: Prepared) -> dict[str, int]:
    return {m: int(v.shape[1]) for m, v in p.data.x.items()}


def modality_batch(
    model: PairStudent, p: Prepared, m: str, idx: torch.Tensor, box: torch.Tensor, flip: torch.Tensor
):
    """Cropped, normalised, adapted 3-channel input of modality ``m`` for pairs ``idx``."""
    x = crop_views(p.data.x[m][idx.cpu()].to(box.device), box, flip, p.size)
    return model.prepare(normalize_modality(x, p.specs[m]), m)


def kd_terms(
    model: PairStudent,
    p: Prepared,
    idx: torch.Tensor,
    loss_fn,
    weights: dict[str, float],
    ctx: dict[str, Any] | None = None,
):
    """Mixed batch: every modality of the pairs ``idx`` through the student at once. ``ctx`` goes to the
    loss (``text_emb``, ``logit_scale``). -> (weighted KD loss, {modality: embeddings}, metrics)."""
    B = idx.shape[0]
    V = p.targets.shape[1]
    v = torch.randint(0, V, (B,))
    ic = idx.cpu()
    dev = idx.device
    box, flip, tgt = p.boxes[ic, v].to(dev), p.flips[ic, v].to(dev), p.targets[ic, v].to(dev)
    mods = p.ps.modalities
    inp = torch.cat([modality_batch(model, p, m, idx, box, flip) for m in mods])
    emb = model.student(inp)
    embs = dict(zip(mods, emb.split(B)))
    loss = 0.0
    metrics = {}
    for m in mods:
        loss = loss + float(weights.get(m, 1.0)) * loss_fn(embs[m], tgt, **(ctx or {}))
        metrics[f"cos_{m}"] = F.cosine_similarity(embs[m].detach().float(), tgt, dim=-1).mean()
    return loss, embs, metrics


def train_config(d: dict, seed: int) -> TrainConfig:
    d = dict(d)
    d.setdefault("seed", seed)
    return build_dataclass(TrainConfig, d, "train")
