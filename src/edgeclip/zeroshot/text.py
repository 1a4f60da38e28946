"""Text classifiers: template-ensembled teacher text embeddings of labels, cached on disk per teacher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from edgeclip.core.io import atomic_path, sha256_text
from edgeclip.core.prompts import DEFAULT_TEMPLATES, check_templates, parse_labels, prompt_ensemble


def cache_dir() -> Path:
    from edgeclip.core.places import cache_root

    return cache_root() / "text"


@torch.no_grad()
def text_classifier(
    encode_text: Callable[[list[str]], torch.Tensor],
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """The zero-shot classifier (L, D): per label, the normalised mean over templates of the normalised text
    embeddings of its prompts. ``encode_text``: list of prompts -> (N, D) embeddings (any text tower)."""
    labels = parse_labels(list(labels))
    templates = check_templates(templates)
    return torch.from_numpy(
        prompt_ensemble(lambda p: encode_text(p).float().cpu().numpy(), labels, templates)
    )


@torch.no_grad()
def text_embeddings(
    teacher, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, use_cache: bool = True
) -> torch.Tensor:
    """(L, D) normalised, template-ensembled text embeddings of ``labels``, cached on disk per teacher."""
    labels = parse_labels(list(labels))
    templates = check_templates(templates)
    # "fill/1": prompts are made by core.prompts.fill (no doubled article); older cache entries do not match
    key = sha256_text("\x00".join(["fill/1", teacher.id, *templates, "\x01", *labels]))[:32]
    path = cache_dir() / f"{key}.npy"
    if use_cache and path.is_file():
        arr = np.load(path)
        if arr.shape == (len(labels), teacher.embed_dim):
            return torch.from_numpy(arr)
    emb = text_classifier(teacher.encode_text, labels, templates)
    if use_cache:
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb.numpy().astype(np.float32))
        except OSError:
            pass  # a read-only home must not break labeling
    return emb
