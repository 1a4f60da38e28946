"""Open-vocabulary labeling: images -> top-k labels by cosine similarity with cached prompt embeddings."""

from .text import parse_labels, text_embeddings
from .label import Embedder, label_images, load_embedder

__all__ = ["parse_labels", "text_embeddings", "Embedder", "label_images", "load_embedder"]
