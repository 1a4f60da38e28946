"""Deprecated: EdgeVL lives in :mod:`edgeclip.train.edgevl` now (data, distill, qat, ptq), and the semi-hard triplet
loss in :mod:`edgeclip.losses`. This name keeps working for one release."""

import warnings

from edgeclip.losses import NEGATIVES, POSITIVES, check_mining, semi_hard_triplet  # noqa: F401
from edgeclip.train.edgevl import *  # noqa: F403
from edgeclip.train.edgevl import __all__ as _edgevl_all

__all__ = [*_edgevl_all, "NEGATIVES", "POSITIVES", "check_mining", "semi_hard_triplet"]

warnings.warn(
    "edgeclip.train.pair is deprecated: import from edgeclip.train.edgevl (and the triplet loss from "
    "edgeclip.losses)",
    DeprecationWarning,
    stacklevel=2,
)
