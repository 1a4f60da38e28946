"""Open-vocabulary labeling: images -> top-k labels by cosine similarity with cached prompt embeddings."""

from edgeclip.core.prompts import parse_labels
from edgeclip.zeroshot.embedder import Embedder, load_embedder
from edgeclip.zeroshot.label import label_images
from edgeclip.zeroshot.text import text_embeddings

__all__ = ["parse_labels", "text_embeddings", "Embedder", "label_images", "load_embedder"]
