"""Deprecated: machine facts, devices and seeds are in :mod:`edgeclip.core.machine`; the shared data folder and
the cache folder in :mod:`edgeclip.core.places`. This name keeps working for one release."""

import warnings

from edgeclip.core.machine import machine_info, resolve_device, seed_everything  # noqa: F401
from edgeclip.core.places import cache_root, shared_data_dir  # noqa: F401

warnings.warn(
    "edgeclip.core.env is deprecated: use edgeclip.core.machine and edgeclip.core.places",
    DeprecationWarning,
    stacklevel=2,
)
