"""Deprecated: parameters, FLOPs and latency are in :mod:`edgeclip.models.cost`. This name keeps working for one
release."""

import warnings

from edgeclip.models.cost import *  # noqa: F403
from edgeclip.models.cost import count_params, flops, latency_ms, model_stats  # noqa: F401

warnings.warn(
    "edgeclip.models.stats is deprecated: use edgeclip.models.cost", DeprecationWarning, stacklevel=2
)
