"""Zero-shot and retrieval scores on embeddings: numpy only, shared by every embedder (torch, ONNX Runtime,
bundle) and every caller (eval, export's bundle accuracy, EdgeVL per modality, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeclip.core.errors import EdgeClipError


def unit(a) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    a = np.asarray(a, dtype=np.float32)
    return a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)


def topk(image_emb, class_emb, k: int = 5) -> np.ndarray:
    """(N, min(k, C)) class indices by cosine similarity, best first."""
    a, c = unit(image_emb), unit(class_emb)
    if a.ndim != 2 or c.ndim != 2 or a.shape[1] != c.shape[1]:
        raise EdgeClipError(f"embedding sizes differ: images {a.shape}, classes {c.shape}")
    return np.argsort(-(a @ c.T), axis=1, kind="stable")[:, : min(k, c.shape[0])]


def accuracy(top: np.ndarray, y: Sequence[int]) -> dict[str, float]:
    """top-1 and top-5 of predictions ``top`` (N, k) against labels ``y`` (N,); 0 for no images."""
    y = np.asarray(y)
    if len(y) == 0:
        return {"top1": 0.0, "top5": 0.0}
    return {"top1": float((top[:, 0] == y).mean()), "top5": float((top[:, :5] == y[:, None]).any(1).mean())}


def retrieval(
    image_emb, text_emb, text_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image->text and text->image Recall@K in the standard protocol (each image with its captions).

    ``text_image[j]``: the index of the image that caption ``j`` describes. i2t R@K: the fraction of images
    with at least one of their captions among the K captions nearest to them; t2i R@K: the fraction of
    captions whose image is among the K images nearest to them.
    """
    a, t = unit(image_emb), unit(text_emb)
    owner = np.asarray(text_image)
    if len(owner) != len(t):
        raise EdgeClipError(f"{len(t)} captions but {len(owner)} caption->image indices")
    if len(a) == 0 or len(t) == 0:
        raise EdgeClipError("retrieval needs at least one image and one caption")
    sims = a @ t.T  # (N images, M captions)
    out: dict[str, float] = {}
    # rank of the best-ranked own caption of each image; rank of the own image of each caption
    order_t = np.argsort(-sims, axis=1)
    own = owner[order_t] == np.arange(len(a))[:, None]
    first_i2t = np.where(own.any(1), own.argmax(1), len(t))
    order_i = np.argsort(-sims.T, axis=1)
    first_t2i = (order_i == owner[:, None]).argmax(1)
    for k in ks:
        out[f"i2t_r{k}"] = float((first_i2t < k).mean())
        out[f"t2i_r{k}"] = float((first_t2i < k).mean())
    return out
