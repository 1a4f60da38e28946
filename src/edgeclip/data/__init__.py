"""Data: robust image decoding, image sources (folders, lists, tar shards) and views."""

from .images import load_image, load_array
from .sources import ImageRecord, open_source

__all__ = ["load_image", "load_array", "ImageRecord", "open_source"]
