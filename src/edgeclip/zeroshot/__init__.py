"""Open-vocabulary labeling: images -> top-k labels by cosine similarity with cached prompt embeddings."""

from edgeclip.zeroshot.label import Embedder, label_images, load_embedder
from edgeclip.zeroshot.text import parse_labels, text_embeddings

__all__ = ["parse_labels", "text_embeddings", "Embedder", "label_images", "load_embedder"]
