"""Zero-shot classification, labeling and retrieval over one Embedder protocol (teacher, student, ONNX, bundle).

Imported lazily, so ``edgeclip label --bundle`` runs where torch is absent: the torch-free parts (embedder,
label, scores) never pull in the text towers.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "parse_labels": "edgeclip.core.prompts",
    "text_embeddings": "edgeclip.zeroshot.text",
    "Embedder": "edgeclip.zeroshot.embedder",
    "load_embedder": "edgeclip.zeroshot.embedder",
    "label_images": "edgeclip.zeroshot.label",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
