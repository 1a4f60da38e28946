"""Adapter that lets ``edgeclip label --bundle DIR`` run a bundle through ``edgeclip.zeroshot.label_images``.

``label_images`` is torch code, so this module (and only this one in edgeclip.runtime) imports torch,
lazily, to hand it tensors. The embeddings themselves come from ONNX Runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from edgeclip.core.errors import EdgeClipError
from edgeclip.runtime.labeler import Labeler


@dataclass
class BundleTeacher:
    """What label_images needs to know about the teacher behind a bundle."""

    id: str
    spec: str
    embed_dim: int
    logit_scale: float


class BundleEmbedder:
    """``.name``, ``.embed(list of PIL) -> (B,D)``, ``.text(labels, templates) -> (L,D)``, ``.teacher.logit_scale``."""

    def __init__(self, labeler: Labeler):
        self.labeler = labeler
        self.name = labeler.name
        t = labeler.manifest.get("teacher") or {}
        self.teacher = BundleTeacher(str(t.get("id", "?")), str(t.get("spec", "?")), labeler.embed_dim,
                                     labeler.logit_scale)
        self.info = labeler.describe()

    def embed(self, images: List):
        import torch

        return torch.from_numpy(self.labeler.embed(images))

    def text(self, labels: Sequence[str], templates: Sequence[str]):
        """The bundle's precomputed embeddings of ``labels``; they were made with the bundle's templates."""
        import torch

        have = self.labeler.known.templates
        if have and list(templates) != list(have):
            raise EdgeClipError(f"this bundle's label embeddings were computed with the templates {have}, not "
                                f"{list(templates)}: pass --template for each of those, or re-export the bundle")
        return torch.from_numpy(self.labeler.known.subset(list(labels)).embeddings)


def bundle_embedder(path: str | os.PathLike, precision: str = "auto", threads: Optional[int] = None) -> BundleEmbedder:
    return BundleEmbedder(Labeler(path, precision=precision, threads=threads))
