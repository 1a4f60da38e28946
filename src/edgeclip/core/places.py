"""Where things live outside the package: the project's shared real data, edgeclip's own cache folder, and the
source checkout this package runs from (an editable install), if any."""

from __future__ import annotations

import os
from pathlib import Path


def checkout_dir() -> Path | None:
    """The source checkout this package runs from (the folder with pyproject.toml above it), or None for an
    installed wheel."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "edgeclip").is_dir():
            return parent
    return None


def shared_data_dir() -> Path:
    """Where the project's real data lives: $EDGECLIP_SHARED_DATA, else ``shared/data`` beside the checkout, else
    ../shared/data from the working folder."""
    env = os.environ.get("EDGECLIP_SHARED_DATA")
    if env:
        return Path(env)
    root = checkout_dir()
    if root is not None and (root.parent / "shared" / "data").exists():
        return root.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def cache_root() -> Path:
    """edgeclip's own cache folder (text embeddings, unpacked archives): $EDGECLIP_CACHE or ~/.cache/edgeclip."""
    return Path(os.environ.get("EDGECLIP_CACHE", Path.home() / ".cache" / "edgeclip"))
