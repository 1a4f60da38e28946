"""Deprecated: the caption metrics are in :mod:`edgeclip.caption_metrics`. This name keeps working for one
release."""

import warnings

from edgeclip.caption_metrics import *  # noqa: F403
from edgeclip.caption_metrics import score_captions  # noqa: F401

warnings.warn(
    "edgeclip.metrics is deprecated: use edgeclip.caption_metrics", DeprecationWarning, stacklevel=2
)
