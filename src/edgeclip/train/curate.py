"""Automatic curation (EdgeVL): the teacher picks the pairs it is most sure about.

Confidence of a pair = max softmax over the teacher's prompt similarities of its RGB image, with the
teacher's logit scale as temperature. Keep the top ``fraction`` (default 0.2, as EdgeVL) or every pair
at or above ``threshold``. ``per_label=True`` takes the top fraction within each pseudo-label instead of
over all pairs: the teacher is more sure of some classes than others, and a global cut can leave a class
with almost no pairs (on CIFAR-10 the global top 20 % keeps 4 automobiles out of 1,000). The manifest
records every pair (kept or not) with its pseudo-label and confidence; a histogram shows where the cut fell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, read_json, write_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names, parse_labels
from edgeclip.data.pairs import PairSet
from edgeclip.data.sources import ImageRecord, file_key
from edgeclip.train.cache import EmbeddingCache, build_cache
from edgeclip.zeroshot.text import text_embeddings

MANIFEST_FORMAT = "edgeclip-curation/1"


def check_fraction(fraction: float | None, threshold: float | None, per_label: bool = False) -> None:
    if threshold is not None and per_label:
        raise EdgeClipError(
            "per-label curation keeps a top fraction of each pseudo-label: give a fraction, not a threshold"
        )
    if threshold is not None:
        if not (0.0 <= threshold <= 1.0):
            raise EdgeClipError(
                f"curation threshold must be in [0, 1] (a softmax confidence), got {threshold}"
            )
        return
    if fraction is None or not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise EdgeClipError(f"curation fraction must be in (0, 1], got {fraction}")


def primary_records(ps: PairSet, spec=None) -> list[ImageRecord]:
    """Foundation image records of the RGB side of every pair (cache keys: path|size|mtime). ``spec``: the
    primary's ModalitySpec; when it names bands (an RGB band set of a multi-band file) the records render them."""
    from edgeclip.data.sources import rendered

    recs = []
    for r in ps.records:
        p = Path(r.files[ps.primary])
        recs.append(ImageRecord(file_key(p), r.key, r.label, p))
    return rendered(recs, spec)


def teacher_embeddings(
    ps: PairSet,
    teacher,
    cache_dir: str | Path,
    views: int = 1,
    batch_size: int = 64,
    progress: bool = False,
    primary_spec=None,
) -> tuple[EmbeddingCache, list[str], list[int]]:
    """Build (or reuse) the teacher-embedding cache of the RGB images; -> (cache, file keys, usable pair indices).
    ``primary_spec``: how the primary is read when it is a band set of a multi-band file."""
    recs = primary_records(ps, primary_spec)
    build_cache(recs, teacher, cache_dir, views=views, batch_size=batch_size, progress=progress)
    cache = EmbeddingCache(cache_dir)
    cache.check_teacher(teacher.describe())
    ok = [i for i, r in enumerate(recs) if r.key in cache]
    return cache, [recs[i].key for i in ok], ok


@dataclass
class CurateConfig:
    """``edgeclip edgevl curate``: score every pair's RGB with the teacher, keep the most confident."""

    teacher: str = ""
    data: str = ""
    out: str = ""
    modalities: list[str] | None = None
    primary: str | None = None
    derive: dict[str, str] = field(default_factory=dict)
    modality: dict[str, dict] = field(default_factory=dict)  # per-modality ModalitySpec settings (band sets)
    split: str | None = None  # only the pairs of this split (splits.json or train/val/test folders)
    labels: list[str] | None = None  # the pseudo-label vocabulary (default: the class folder names)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    fraction: float | None = 0.2
    threshold: float | None = None
    per_label: bool = False
    cache: str | None = None
    views: int = 1
    batch_size: int = 64
    max_images: int = 0  # a seeded subset, the one PairDataConfig.max_images takes in the stages after it
    seed: int = 0
    plot: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fraction(self.fraction, self.threshold, self.per_label)
        if not (self.teacher and self.data and self.out):
            raise EdgeClipError("curation needs a teacher spec, paired data and an --out folder")


def run_curate(cfg: CurateConfig, teacher=None, progress: bool = False) -> dict:
    """Open the pairs (a seeded subset with ``max_images``), load the teacher unless given, curate."""
    import random

    from edgeclip.core.machine import resolve_device
    from edgeclip.data.pairs import default_specs, open_pairs
    from edgeclip.models.teachers import load_teacher

    ps = open_pairs(cfg.data, cfg.modalities, cfg.primary, cfg.derive, cfg.split)
    if cfg.max_images and len(ps) > cfg.max_images:
        ps = ps.subset(sorted(random.Random(cfg.seed).sample(range(len(ps)), cfg.max_images)))
    teacher = teacher or load_teacher(cfg.teacher, device=resolve_device(cfg.device))
    return curate(
        teacher,
        ps,
        cfg.out,
        labels=cfg.labels,
        templates=cfg.templates,
        fraction=cfg.fraction,
        threshold=cfg.threshold,
        cache=cfg.cache,
        views=cfg.views,
        batch_size=cfg.batch_size,
        plot=cfg.plot,
        progress=progress,
        per_label=cfg.per_label,
        primary_spec=default_specs(ps, cfg.modality)[ps.primary],
    )


def curate(
    teacher,
    ps: PairSet,
    out: str | Path,
    labels: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    fraction: float | None = 0.2,
    threshold: float | None = None,
    cache: str | Path | None = None,
    views: int = 1,
    batch_size: int = 64,
    plot: bool = True,
    progress: bool = False,
    per_label: bool = False,
    primary_spec=None,
) -> dict:
    """Score every pair with the teacher, keep the most confident, write ``out/manifest.json`` (+ histogram).
    ``primary_spec``: how the primary is read when it is a band set of a multi-band file."""
    check_fraction(fraction, threshold, per_label)
    out = Path(out)
    if labels is None:
        if not ps.classes:
            raise EdgeClipError(
                "curation needs the label vocabulary: give labels (--labels 'a,b,c' or @file.txt)"
            )
        labels = class_names(ps.classes)
    labels = parse_labels(list(labels))
    cache_dir = Path(cache) if cache else out / "cache"
    emb_cache, fkeys, ok = teacher_embeddings(
        ps, teacher, cache_dir, views, batch_size, progress, primary_spec
    )
    n_failed = len(ps.records) - len(ok)
    emb = emb_cache.targets(fkeys, view=0)
    temb = text_embeddings(teacher, labels, templates)
    prob = (float(teacher.logit_scale) * emb @ temb.t()).softmax(-1)
    conf, pl = prob.max(-1)
    n = len(ok)
    keep = select_confident(conf, pl, fraction, threshold, per_label)
    items = _items(ps, ok, labels, pl, conf, keep)
    summary = _summary(ps, n, n_failed, keep, conf, pl, labels, fraction, threshold, per_label, items)
    skipped = list(ps.skipped) + [f"{k.split('|')[0]}: {v}" for k, v in emb_cache.failed.items()]
    manifest = {
        "format": MANIFEST_FORMAT,
        "teacher": teacher.describe(),
        **{"data": ps.root, "primary": ps.primary, "modalities": ps.modalities},
        **{"labels": labels, "templates": list(templates), "summary": summary},
        **{"skipped": skipped, "items": items},
    }
    write_json(out / "manifest.json", manifest)
    if plot:
        summary["histogram"] = str(
            _histogram(
                conf.numpy(), keep.numpy(), summary["cut_confidence"], out / "confidence_hist.png", labels
            )
        )
    return {"manifest": str(out / "manifest.json"), **summary}


def select_confident(conf, pl, fraction: float | None, threshold: float | None, per_label: bool):
    """The kept mask: confidence >= ``threshold``, else the top ``fraction`` (of each pseudo-label with
    ``per_label``), at least one per group, ties broken by order."""
    if threshold is not None:
        return conf >= threshold
    n = len(conf)
    keep = torch.zeros(n, dtype=torch.bool)
    groups = [torch.nonzero(pl == c).flatten() for c in pl.unique()] if per_label else [torch.arange(n)]
    for g in groups:
        order = g[torch.sort(conf[g], descending=True, stable=True).indices]
        keep[order[: max(1, int(math.ceil(fraction * len(g))))]] = True
    return keep


def _summary(ps, n, n_failed, keep, conf, pl, labels, fraction, threshold, per_label, items) -> dict:
    return {
        "n_pairs": len(ps.records),
        "n_scored": n,
        "n_kept": int(keep.sum()),
        "skipped_unreadable": n_failed,
        "skipped_unpaired": len(ps.skipped),
        "fraction": fraction if threshold is None else None,
        "threshold": threshold,
        "per_label": per_label,
        "cut_confidence": float(conf[keep].min()) if keep.any() else float("nan"),
        "mean_confidence_all": float(conf.mean()) if n else 0.0,
        "mean_confidence_kept": float(conf[keep].mean()) if keep.any() else 0.0,
        "kept_per_label": {lb: int(((pl == i) & keep).sum()) for i, lb in enumerate(labels)},
        **_pseudo_label_accuracy(items),
    }


def _items(ps: PairSet, ok: list[int], labels: list[str], pl, conf, keep) -> list[dict]:
    items = []
    for j, i in enumerate(ok):
        r = ps.records[i]
        d = {
            "key": r.key,
            "file": str(r.files[ps.primary]),
            "pseudo_label": labels[int(pl[j])],
            "label_index": int(pl[j]),
            "confidence": round(float(conf[j]), 6),
            "kept": bool(keep[j]),
        }
        if r.label is not None and ps.classes:
            d["true_label"] = class_names(ps.classes)[r.label]
        items.append(d)
    return items


def _pseudo_label_accuracy(items: list[dict]) -> dict[str, float]:
    """Against the class folders, when the data has them: over all scored pairs and over the kept ones."""
    true = [it for it in items if "true_label" in it]
    if not true:
        return {}
    tk = [it for it in true if it["kept"]]
    return {
        "pseudo_label_accuracy_all": sum(it["pseudo_label"] == it["true_label"] for it in true) / len(true),
        "pseudo_label_accuracy_kept": sum(it["pseudo_label"] == it["true_label"] for it in tk)
        / max(1, len(tk)),
    }


def _histogram(conf: np.ndarray, keep: np.ndarray, cut: float, path: Path, labels: Sequence[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(0, 1, 41)
    ax.hist(conf[~keep], bins=bins, color="#999999", label=f"dropped ({int((~keep).sum())})")
    ax.hist(conf[keep], bins=bins, color="#1f77b4", label=f"kept ({int(keep.sum())})")
    if not math.isnan(cut):
        ax.axvline(cut, color="#d62728", linestyle="--", label=f"cut {cut:.3f}")
    ax.axvline(1.0 / len(labels), color="#2ca02c", linestyle=":", label=f"chance 1/{len(labels)}")
    ax.set_xlabel("teacher confidence (max softmax over prompts)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def load_manifest(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EdgeClipError(f"curation manifest not found: {p}")
    try:
        m = read_json(p)
    except ValueError as e:
        raise EdgeClipError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise EdgeClipError(f"{p} is not an edgeclip curation manifest")
    return m


def apply_manifest(
    ps: PairSet, manifest: dict, kept_only: bool = True
) -> tuple[PairSet, dict[str, int], int]:
    """Restrict ``ps`` to the manifest's kept pairs; -> (subset, pair key -> pseudo-label index, missing count)."""
    items = {it["key"]: it for it in manifest["items"]}
    idx, pseudo = [], {}
    for i, r in enumerate(ps.records):
        it = items.get(r.key)
        if it is None or (kept_only and not it["kept"]):
            continue
        idx.append(i)
        pseudo[r.key] = int(it["label_index"])
    wanted = sum(1 for it in items.values() if it["kept"] or not kept_only)
    if not idx:
        raise EdgeClipError(f"none of the manifest's pairs are in {ps.root} (was it made for other data?)")
    return ps.subset(idx), pseudo, wanted - len(idx)
