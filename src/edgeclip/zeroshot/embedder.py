"""Embedders: one protocol for everything that turns images into embeddings in a teacher's text space.

A teacher, a distilled student (torch), an exported ONNX student and an edge bundle (ONNX Runtime, no torch)
all answer ``embed(images) -> (B, D)`` and ``text(labels, templates) -> (L, D)``, unit-length numpy arrays,
so one labeling loop and one zero-shot evaluation (``edgeclip.zeroshot.evaluate``) serve them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.zeroshot.scores import unit


class TeacherInfo(Protocol):
    id: str
    spec: str
    embed_dim: int
    logit_scale: float


def load_for(embedder, record):
    """``record`` read as ``embedder`` takes its images (a modality bundle reads its own files; the rest take RGB
    PIL images). Raises ImageLoadError or ModalityError for that one file."""
    load = getattr(embedder, "load", None)
    return load(record) if load is not None else record.load()


class Embedder(Protocol):
    name: str
    teacher: TeacherInfo
    info: dict[str, Any]

    def embed(self, images: list) -> np.ndarray: ...

    def text(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray: ...

    def encode_texts(
        self, texts: Sequence[str]
    ) -> np.ndarray: ...  # raw texts (captions) in order, no ensembling


@dataclass
class TorchEmbedder:
    """PIL images -> embeddings by a torch function; the teacher's text tower names the labels."""

    name: str
    embed_fn: Callable[[list], Any]
    teacher: Any  # a Teacher: encode_text / id / spec / embed_dim / logit_scale
    info: dict = field(default_factory=dict)

    def embed(self, images: list) -> np.ndarray:
        return unit(self.embed_fn(images).float().cpu().numpy())

    def text(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        from edgeclip.zeroshot.text import text_embeddings

        return text_embeddings(self.teacher, labels, templates).numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return unit(self.teacher.encode_text(list(texts)).cpu().numpy())


def onnx_embedder(
    onnx_path: str | os.PathLike,
    preprocess,
    teacher,
    name: str,
    threads: int | None = None,
    info: dict | None = None,
) -> TorchEmbedder:
    """An exported student run by ONNX Runtime, with the student's own (torch) preprocessing."""
    import torch

    from edgeclip.runtime.session import ort_session

    sess = ort_session(onnx_path, threads)
    inp = sess.get_inputs()[0].name
    tf = preprocess.torch_transform()

    def fn(imgs):
        x = torch.stack([tf(i) for i in imgs]).numpy().astype(np.float32)
        return torch.from_numpy(sess.run(None, {inp: x})[0])

    return TorchEmbedder(name, fn, teacher, info or {})


@dataclass
class _BundleTeacher:
    id: str
    spec: str
    embed_dim: int
    logit_scale: float


class BundleEmbedder:
    """An edge bundle (ONNX Runtime, numpy): its label embeddings were made by the teacher at export time; a
    bundle exported with ``--text-encoder`` embeds new texts itself."""

    def __init__(self, labeler):
        self.labeler = labeler
        self.name = labeler.name
        t = labeler.manifest.get("teacher") or {}
        self.teacher = _BundleTeacher(
            str(t.get("id", "?")), str(t.get("spec", "?")), labeler.embed_dim, labeler.logit_scale
        )
        self.info = labeler.describe()

    def embed(self, images: list) -> np.ndarray:
        return unit(self.labeler.embed(images))

    def load(self, record):
        """A record as this bundle reads it: an RGB photo, or its own modality's file (a thermal frame in its
        own depth, a multi-band tile) read and checked alone, so a bad file is skipped on its own."""
        pre = self.labeler.preprocess
        if getattr(pre, "modality", None) is None:
            return record.load()
        return pre.read(record.data if record.data is not None else record.path)

    def text(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """The bundle's precomputed embeddings of ``labels`` (made with the bundle's templates); with a bundled
        text tower, any other labels or templates are embedded on the device."""
        lab, have = self.labeler, self.labeler.known.templates
        known = set(lab.known.names)
        if lab.has_text_tower and (any(x not in known for x in labels) or list(templates) != list(have)):
            return unit(lab.text_tower.classifier(list(labels), list(templates)))
        if have and list(templates) != list(have):
            raise EdgeClipError(
                f"this bundle's label embeddings were computed with the templates {have}, not "
                f"{list(templates)}: pass --template for each of those, or re-export the bundle"
            )
        return unit(lab.known.subset(list(labels)).embeddings)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.labeler.has_text_tower:
            return self.labeler.text_tower.embed(list(texts))
        raise EdgeClipError(
            "this bundle has no text tower (export it with --text-encoder): retrieval needs --teacher or --student"
        )


def load_embedder(
    teacher: str | None = None,
    student: str | None = None,
    bundle: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    threads: int | None = None,
) -> Embedder:
    """A teacher (``--teacher``), a student checkpoint (``--student``; its own teacher names the labels) or an
    edge bundle (``--bundle``, torch-free)."""
    if bundle:
        from edgeclip.runtime.labeler import Labeler

        return BundleEmbedder(Labeler(bundle, precision=precision, threads=threads))
    import torch

    from edgeclip.models.teachers import load_teacher, teacher_of

    if student:
        from edgeclip.models.student import load_student

        st, pp, ck = load_student(student, map_location=device)
        st.to(device)
        t = teacher_of(ck, f"student {student}", teacher, device=device, embed_dim=st.embed_dim, near=student)
        tf = pp.torch_transform()

        @torch.no_grad()
        def fn(imgs):
            return st(torch.stack([tf(i) for i in imgs]).to(device))

        return TorchEmbedder(
            f"student:{Path(student).name}",
            fn,
            t,
            {"arch": st.arch, "params": sum(p.numel() for p in st.parameters())},
        )
    if not teacher:
        raise EdgeClipError("give --teacher SPEC or --student CHECKPOINT (or --bundle DIR)")
    t = load_teacher(teacher, device=device)

    @torch.no_grad()
    def tfn(imgs):
        return t.encode_image(torch.stack([t.preprocess(i) for i in imgs]).to(device), normalize=False)

    return TorchEmbedder(f"teacher:{t.id}", tfn, t, {})
