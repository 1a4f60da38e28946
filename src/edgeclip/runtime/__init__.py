"""Run an exported edge bundle with numpy, Pillow and ONNX Runtime only (no torch anywhere in here).

    from edgeclip.runtime import load_bundle
    model = load_bundle("bundle/", precision="int8", threads=2)   # a Labeler for labeler bundles
    model.label("photo.jpg", topk=5)

Bundle kinds are a registry (``RUNTIMES``): another bundle type (e.g. a captioner) registers its
loader here under the ``kind`` its manifest records.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from edgeclip.core.registry import Registry
from edgeclip.runtime.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    LabelSet,
    read_labels,
    read_manifest,
)
from edgeclip.runtime.captioner import CaptionerBundle
from edgeclip.runtime.labeler import Labeler
from edgeclip.runtime.preprocess import NumpyPreprocess

RUNTIMES: Registry[Callable[..., Any]] = Registry("bundle kind")
RUNTIMES.register("labeler", help="open-vocabulary labeler: image -> embedding -> top-k labels")(Labeler)
RUNTIMES.register("captioner", help="captioner: image -> encoder -> greedy / beam decoding -> caption")(
    CaptionerBundle
)


def load_bundle(
    path: str | os.PathLike, precision: str = "auto", threads: int | None = None, verify: bool = True
):
    """Load any bundle by the ``kind`` its manifest records (verifying file hashes first)."""
    man = read_manifest(path, verify=verify)
    return RUNTIMES.get(man.get("kind", "labeler"))(path, precision=precision, threads=threads, verify=False)


__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "CaptionerBundle",
    "LabelSet",
    "Labeler",
    "NumpyPreprocess",
    "RUNTIMES",
    "load_bundle",
    "read_labels",
    "read_manifest",
]
