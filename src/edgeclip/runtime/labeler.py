"""Open-vocabulary labeling with an edge bundle: numpy + Pillow + ONNX Runtime, no torch.

from edgeclip.runtime import Labeler
lab = Labeler("bundle/", precision="int8", threads=2)
lab.label("cat.jpg")                        # [{'label': 'cat', 'score': 0.93, 'cosine': 0.41}, ...]
lab.label_batch(["a.jpg", "b.png"], topk=3)
lab.add_labels(["zebra"], zebra_embedding)  # precomputed teacher text embeddings (L, D)
lab.set_labels(["cat", "dog"])              # keep a subset of the bundle's labels
lab.set_labels(["a dog running on grass"])  # any new text, with a bundle exported with --text-encoder
lab.add_examples("my truck", ["ex1.jpg", "ex2.jpg"])   # a label from example images (query by example)
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.images import load_image, to_rgb
from edgeclip.core.prompts import MAX_LABELS, clean_labels
from edgeclip.runtime.bundle import (
    LABELS,
    PREPROCESS,
    BundleError,
    LabelSet,
    make_session,
    model_output_dim,
    normalise_rows,
    pick_model,
    prototype,
    read_bundle_json,
    read_kind,
    read_labels,
)
from edgeclip.runtime.preprocess import NumpyPreprocess
from edgeclip.runtime.text import TextTower, has_text_tower

ImageInput = str | os.PathLike | bytes | io.BytesIO | Image.Image


def to_image(x: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """A path, encoded bytes or a PIL image -> RGB PIL image (ImageLoadError when it cannot be decoded or its
    header claims more than ``max_pixels``)."""
    return to_rgb(x) if isinstance(x, Image.Image) else load_image(x, max_pixels)


class Labeler:
    """A loaded labeler bundle: image(s) -> normalised embeddings -> top-k labels.

    ``precision``: auto (int8 when present) | fp32 | int8. ``threads``: ONNX Runtime intra-op threads.
    ``verify``: check every file against the manifest's sha256 before loading. ``text_precision``: the bundled
    text tower's (auto: the export's measured choice); it is loaded on first use.
    """

    kind = "labeler"

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        text_precision: str = "auto",
    ):
        self.root = Path(path)
        self.text_precision = text_precision
        self._text: TextTower | None = None
        self.manifest = read_kind(self.root, self.kind, verify, default_kind="labeler")
        self.model_file = pick_model(self.manifest, precision)
        self.precision = next(k for k, v in self.manifest["models"].items() if v == self.model_file)
        self.preprocess = NumpyPreprocess.from_dict(read_bundle_json(self.root / PREPROCESS))
        self.session = make_session(self.root / self.model_file, threads)
        self.threads = threads
        self.input_name = self.session.get_inputs()[0].name
        self.embed_dim = model_output_dim(self.session) or int(self.manifest.get("embed_dim", 0))
        self.bundle_labels = read_labels(self.root / LABELS)
        if self.bundle_labels.dim != self.embed_dim:
            raise BundleError(
                f"{self.root / LABELS}: label embeddings are {self.bundle_labels.dim}-d but the model "
                f"outputs {self.embed_dim}-d embeddings"
            )
        self.known: LabelSet = self.bundle_labels  # every label with an embedding
        self.labels: LabelSet = self.bundle_labels  # the active ones
        teacher = self.manifest.get("teacher") or {}
        self.logit_scale = float(teacher.get("logit_scale", 100.0))
        self.name = f"bundle:{self.root.name}:{self.precision}"

    # ------------------------------------------------------------------ embeddings
    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(B, D) L2-normalised float32 embeddings."""
        if not len(images):
            return np.zeros((0, self.embed_dim), np.float32)
        x = self.preprocess.inputs(images)  # RGB photos, or the bundle's own modality (thermal, band sets)
        out = self.session.run(None, {self.input_name: x})[0]
        return normalise_rows(np.asarray(out, dtype=np.float32), "model output")

    # ------------------------------------------------------------------ text
    @property
    def has_text_tower(self) -> bool:
        return has_text_tower(self.root)

    @property
    def text_tower(self) -> TextTower:
        """The bundle's text tower (BundleError when it was exported without ``--text-encoder``)."""
        if self._text is None:
            self._text = TextTower(self.root, self.text_precision, self.threads)
            if self._text.embed_dim and self._text.embed_dim != self.embed_dim:
                raise BundleError(
                    f"the bundle's text tower gives {self._text.embed_dim}-d embeddings, its image model "
                    f"{self.embed_dim}-d"
                )
        return self._text

    def embed_labels(self, names: Sequence[str]) -> np.ndarray:
        """(L, D) embeddings of any label texts, with the bundled text tower and the bundle's prompt templates."""
        return self.text_tower.classifier(clean_labels(names), self.bundle_labels.templates)

    # ------------------------------------------------------------------ labels
    @property
    def label_names(self) -> list[str]:
        return list(self.labels.names)

    def set_labels(self, names: Sequence[str], embeddings: np.ndarray | None = None) -> None:
        """Replace the active labels: known names (the bundle's or added ones), new names with embeddings (L, D),
        or, with a bundled text tower, any new text (embedded here, on the device)."""
        names = clean_labels(names)
        if embeddings is not None:
            self._remember(self._checked(names, embeddings))
        else:
            new = [n for n in names if n not in set(self.known.names)]
            if new and self.has_text_tower:
                self._remember(self._checked(new, self.embed_labels(new)))
        self.labels = self.known.subset(names)

    def add_labels(
        self, names: Sequence[str], embeddings: np.ndarray | None = None, replace: bool = False
    ) -> None:
        """Add labels from precomputed teacher text embeddings (L, D), or (``embeddings`` None) from the bundled
        text tower. A label the bundle was exported with keeps its embedding unless ``replace``; all labels
        together stay under MAX_LABELS."""
        names = clean_labels(names)
        if embeddings is None:
            embeddings = self.embed_labels(names)
        shipped = [n for n in names if n in set(self.bundle_labels.names)]
        if shipped and not replace:
            raise EdgeClipError(
                f"{', '.join(map(repr, shipped[:5]))} came with the bundle: its embedding is not "
                "replaced unless asked (replace=true)"
            )
        total = len(set(self.known.names) | set(names))
        if total > MAX_LABELS:
            raise EdgeClipError(f"too many labels ({total} with these; at most {MAX_LABELS})")
        new = self._checked(names, embeddings)
        self._remember(new)
        self.labels = self.known.subset([n for n in self.labels.names if n not in new.names] + new.names)

    def add_examples(self, name: str, images: Sequence[ImageInput], replace: bool = False) -> None:
        """A label from one or more example images (a query by example): the normalised mean of this model's
        embeddings of them. It joins the active labels."""
        if not len(images):
            raise EdgeClipError(f"label {name!r}: no example images")
        self.add_labels([name], prototype(self.embed(images))[None], replace=replace)

    def _remember(self, new: LabelSet) -> None:
        keep = [i for i, n in enumerate(self.known.names) if n not in set(new.names)]
        self.known = LabelSet(
            [self.known.names[i] for i in keep] + new.names,
            np.concatenate([self.known.embeddings[keep], new.embeddings]),
            self.known.templates,
        )

    def _checked(self, names: list[str], embeddings) -> LabelSet:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.embed_dim:
            raise EdgeClipError(
                f"label embeddings must be (L, {self.embed_dim}) for this model, got {emb.shape}"
            )
        return LabelSet(names, emb, self.labels.templates)

    # ------------------------------------------------------------------ labeling
    def scores(self, emb: np.ndarray, labels: LabelSet | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cosines (B, L), softmax probabilities (B, L)) against ``labels`` (default: the active labels)."""
        labels = labels if labels is not None else self.labels
        cos = emb @ labels.embeddings.T
        z = self.logit_scale * cos
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return cos, z / z.sum(axis=1, keepdims=True)

    def label_batch(
        self, images: Sequence[ImageInput], topk: int = 5, labels: LabelSet | None = None
    ) -> list[list[dict[str, Any]]]:
        """For each image, the top-k labels: [{'label', 'score' (softmax), 'cosine'}, ...] best first."""
        if topk < 1:
            raise EdgeClipError(f"topk must be >= 1, got {topk}")
        labels = (
            labels if labels is not None else self.labels
        )  # one snapshot: set_labels may run concurrently
        cos, prob = self.scores(self.embed(images), labels)
        k = min(topk, len(labels.names))
        out = []
        for c, p in zip(cos, prob):
            idx = np.argsort(-p, kind="stable")[:k]
            out.append([{"label": labels.names[i], "score": float(p[i]), "cosine": float(c[i])} for i in idx])
        return out

    def label(self, image: ImageInput, topk: int = 5, labels: LabelSet | None = None) -> list[dict[str, Any]]:
        return self.label_batch([image], topk, labels)[0]

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "kind": self.kind,
            "bundle": self.root.name,
            "precision": self.precision,
            "model": self.model_file,
            "models": m.get("models"),
            "input_size": self.preprocess.size,
            "embed_dim": self.embed_dim,
            "labels": self.label_names,
            "known_labels": list(self.known.names),
            "templates": self.bundle_labels.templates,
            "teacher": m.get("teacher", {}).get("id"),
            "student": m.get("student", {}).get("arch"),
            "threads": self.threads,
            "text_tower": self.text_tower.describe() if self.has_text_tower else None,
        }
