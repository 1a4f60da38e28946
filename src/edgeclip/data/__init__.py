"""Data: robust image decoding, image sources (folders, lists, tar shards) and views."""

from edgeclip.core.images import load_array, load_image
from edgeclip.data.sources import ImageRecord, open_source

__all__ = ["load_image", "load_array", "ImageRecord", "open_source"]
