"""Prompt-template ensembles and an on-disk cache of teacher text embeddings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, sha256_text

DEFAULT_TEMPLATES = ["a photo of a {}."]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECLIP_CACHE", Path.home() / ".cache" / "edgeclip")) / "text"


def parse_labels(labels: str | Sequence[str] | None) -> List[str]:
    """``"cat,dog"``, a list, or ``@file.txt`` (one label per line) -> cleaned, de-duplicated labels."""
    if labels is None:
        raise EdgeClipError("no labels given (--labels 'cat,dog,car' or --labels @labels.txt)")
    if isinstance(labels, str):
        if labels.startswith("@"):
            p = Path(labels[1:])
            if not p.is_file():
                raise EdgeClipError(f"label file not found: {p}")
            items = p.read_text(encoding="utf-8").splitlines()
        else:
            items = labels.split(",")
    else:
        items = list(labels)
    out, seen = [], set()
    for it in items:
        it = " ".join(str(it).split())
        if it and it not in seen:
            out.append(it)
            seen.add(it)
    if not out:
        raise EdgeClipError("the label list is empty")
    return out


def check_templates(templates: Sequence[str]) -> List[str]:
    templates = list(templates) or DEFAULT_TEMPLATES
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise EdgeClipError(f"prompt template {bad[0]!r} has no '{{}}' placeholder")
    return templates


@torch.no_grad()
def text_embeddings(teacher, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                    use_cache: bool = True) -> torch.Tensor:
    """(L, D) normalised, template-ensembled text embeddings of ``labels``, cached on disk per teacher."""
    labels = parse_labels(list(labels))
    templates = check_templates(templates)
    key = sha256_text("\x00".join([teacher.id, *templates, "\x01", *labels]))[:32]
    path = cache_dir() / f"{key}.npy"
    if use_cache and path.is_file():
        arr = np.load(path)
        if arr.shape == (len(labels), teacher.embed_dim):
            return torch.from_numpy(arr)
    per_t = [teacher.encode_text([t.format(l) for l in labels]).cpu() for t in templates]
    emb = F.normalize(torch.stack(per_t).mean(0), dim=-1)
    if use_cache:
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb.numpy().astype(np.float32))
        except OSError:
            pass  # a read-only home must not break labeling
    return emb
