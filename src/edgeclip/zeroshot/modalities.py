"""Zero-shot top-1 per modality (EdgeVL): the teacher on RGB, fp32 students and int8 ONNX models on every
modality; a loop over modalities around the shared scores of ``edgeclip.zeroshot.scores``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import read_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.pairs import PairTensors, normalize_modality
from edgeclip.models.pair import PairStudent
from edgeclip.zeroshot.scores import accuracy, topk, unit
from edgeclip.zeroshot.text import text_embeddings


@dataclass
class PairEmbedder:
    """An :class:`~edgeclip.zeroshot.embedder.Embedder` of one or more modalities: ``embed_modality(m, x01)``
    embeds a [0,1] batch of modality ``m`` (after the data-side adapter), and as every Embedder it embeds images
    (``embed``: PIL images of the primary modality at ``size``) and names labels with the teacher's text tower.
    Calling it is ``embed_modality`` (the per-modality evaluation's form)."""

    name: str
    embed_modality: Callable[[str, torch.Tensor], torch.Tensor]
    teacher: Any = None
    primary: str = "rgb"
    size: int | None = None
    info: dict = field(default_factory=dict)

    def __call__(self, modality: str, x01: torch.Tensor) -> torch.Tensor:
        return self.embed_modality(modality, x01)

    def embed(self, images: list) -> np.ndarray:
        if self.size is None:
            raise EdgeClipError(f"{self.name}: no input size known to embed images with")
        from torchvision.transforms.functional import pil_to_tensor, resize

        x = torch.stack(
            [resize(pil_to_tensor(i.convert("RGB")), [self.size, self.size], antialias=True) for i in images]
        )
        return unit(self.embed_modality(self.primary, x.float() / 255).float().cpu().numpy())

    def _teacher(self):
        if self.teacher is None:
            raise EdgeClipError(f"{self.name}: no teacher to embed texts with")
        return self.teacher

    def text(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        return text_embeddings(self._teacher(), labels, templates).numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return unit(self._teacher().encode_text(list(texts)).cpu().numpy())


# the per-modality evaluation's models: PairEmbedders (kept as a name for type hints)
Embed = PairEmbedder


def torch_embedder(model: PairStudent, teacher=None, size: int | None = None) -> PairEmbedder:
    model.eval()

    @torch.no_grad()
    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        return model.embed_unit(x01, m)

    return PairEmbedder("pair student (torch fp32)", f, teacher, model.primary, size)


def onnx_sessions(exports: dict[str, str]) -> dict:
    from edgeclip.runtime.session import ort_session

    made: dict[str, object] = {}
    out = {}
    for m, path in exports.items():
        if not Path(path).is_file():
            raise EdgeClipError(f"ONNX model for {m} not found: {path}")
        if path not in made:
            made[path] = ort_session(path, max(1, torch.get_num_threads()))
        out[m] = made[path]
    return out


def onnx_embedder(exports: dict[str, str], specs: dict, name: str = "int8 ONNX") -> PairEmbedder:
    """Embedder over exported ONNX models (one per modality, possibly shared)."""
    sess = onnx_sessions(exports)

    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        if m not in sess:
            raise EdgeClipError(f"no ONNX model for modality {m} (have: {', '.join(sess)})")
        s = sess[m]
        x = normalize_modality(x01, specs[m]).numpy()
        return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x})[0])

    return PairEmbedder(name, f)


def exported_embedder(result_json: str | Path, teacher=None) -> PairEmbedder:
    """Embedder of a ``qat.json`` / ``ptq.json`` written by ``edgeclip edgevl qat`` / ``edgeclip edgevl ptq``."""
    from edgeclip.data.pairs import ModalitySpec

    r = read_json(result_json)
    specs = {m: ModalitySpec.from_dict(d) for m, d in r["specs"].items()}
    e = onnx_embedder(r["exports"], specs, f"int8 ONNX ({Path(result_json).name})")
    e.teacher, e.primary, e.size = teacher, r.get("primary", e.primary), r.get("img_size")
    return e


def teacher_embedder(teacher, primary: str) -> PairEmbedder:
    """The teacher as a PairEmbedder: RGB, and any 3-channel modality fed to it as if it were RGB (a replicated
    1-channel map, a false-colour band set): how a CLIP user would feed it, the baseline a student must beat."""

    @torch.no_grad()
    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        if getattr(x01, "ndim", 0) != 4 or x01.shape[1] != 3:
            raise EdgeClipError(
                f"the teacher reads RGB-like (B, 3, H, W) batches; {m} gave shape {tuple(getattr(x01, 'shape', ()))}"
            )
        x = x01.float()
        if x.shape[-1] != teacher.image_size:
            x = F.interpolate(x, size=(teacher.image_size,) * 2, mode="bicubic", align_corners=False).clamp(
                0, 1
            )
        mean = torch.tensor(teacher.mean).view(1, -1, 1, 1)
        std = torch.tensor(teacher.std).view(1, -1, 1, 1)
        return teacher.encode_image((x - mean) / std)

    return PairEmbedder(f"teacher {teacher.spec}", f, teacher, primary, teacher.image_size)


def zero_shot(
    embed: Embed,
    data: PairTensors,
    modality: str,
    text_emb: torch.Tensor,
    labels: torch.Tensor,
    bs: int = 256,
) -> dict[str, float]:
    """Top-1 of one model on one modality: its embeddings scored by the shared zero-shot code."""
    t0 = time.perf_counter()
    embs = [
        embed.embed_modality(modality, data.x[modality][i : i + bs]).float().cpu().numpy()
        for i in range(0, len(data), bs)
    ]
    dt = time.perf_counter() - t0
    n = sum(len(e) for e in embs)
    if not n:
        return {"top1": 0.0, "n": 0, "images_per_s": 0.0, "per_class": {}}
    pred = topk(np.concatenate(embs), text_emb.numpy(), 1)
    y = labels.numpy()
    per_class = {int(c): float((pred[y == c, 0] == c).mean()) for c in np.unique(y)}
    top1 = accuracy(pred, y)["top1"]
    return {"top1": top1, "n": n, "images_per_s": n / dt if dt > 0 else 0.0, "per_class": per_class}


def evaluate_pairs(
    data: PairTensors,
    classes: Sequence[str],
    primary: str,
    modalities: Sequence[str],
    models: dict[str, Embed],
    teacher=None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    class_subset: list[str] | None = None,
) -> dict:
    """Top-1 of every model on every modality (and the teacher on RGB).

    ``class_subset``: evaluate only on the images of these classes, choosing among them (unseen classes).
    """
    if teacher is None:
        raise EdgeClipError("evaluation needs the teacher (its text tower names the classes)")
    if data.labels is None:
        raise EdgeClipError("evaluation needs labelled pairs (class sub-folders)")
    names = class_names(classes)
    labels = data.labels
    keep = torch.ones(len(data), dtype=torch.bool)
    if class_subset:
        bad = [c for c in class_subset if c not in names]
        if bad:
            raise EdgeClipError(f"unknown class {bad[0]!r} (have: {', '.join(names)})")
        ids = [names.index(c) for c in class_subset]
        keep = torch.isin(labels, torch.tensor(ids))
        remap = {c: i for i, c in enumerate(ids)}
        labels = torch.tensor([remap.get(int(lb), -1) for lb in labels])
        names = list(class_subset)
        sel = keep.nonzero().squeeze(1)
        data = PairTensors(
            {m: v[sel] for m, v in data.x.items()},
            [data.keys[i] for i in sel.tolist()],
            [data.records[i] for i in sel.tolist()],
            labels[sel],
            data.skipped,
        )
        labels = data.labels
    out: dict = {"classes": names, "n": len(data), "templates": list(templates)}
    temb = text_embeddings(teacher, names, templates)

    def scored(emb: Embed, m: str) -> dict:
        r = zero_shot(emb, data, m, temb, labels)
        r["per_class"] = {names[c]: v for c, v in r["per_class"].items()}  # top-1 on each class's images
        return r

    te = teacher_embedder(teacher, primary)
    # the teacher on RGB, and on each other 3-channel modality as a CLIP user would feed it
    out["teacher"] = {m: scored(te, m) for m in modalities if data.x[m].shape[1] == 3}
    for name, emb in models.items():
        out[name] = {m: scored(emb, m) for m in modalities}
    return out


def evaluate_pair_student(
    data: str,
    student: str,
    onnx: Sequence[str] | dict[str, str] = (),
    derive: dict | None = None,
    modalities: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    max_images: int = 0,
    seed: int = 0,
    exclude: dict | None = None,
    split: str | None = None,
) -> dict:
    """Top-1 per modality on labelled paired data: the teacher (recorded by the student) on RGB, the stage-1
    student fp32 and each int8 export (qat.json / ptq.json; a list is named by file stem, a dict by its keys)
    on every modality. ``max_images``: a seeded sample. ``exclude: {max_images: N, seed: S}`` leaves out the
    N pairs a training run with those settings drew from the same folder: a validation split of a train folder.
    ``split``: only that split's pairs (splits.json or train/val/test folders)."""
    import random

    from edgeclip.data.pairs import open_pairs, preload_pairs
    from edgeclip.models.pair import load_pair_student
    from edgeclip.models.teachers import teacher_of

    model, pre, ck = load_pair_student(student)
    teacher = teacher_of(ck, f"student {student}", near=student)
    ps = open_pairs(data, list(modalities) if modalities else None, model.primary, dict(derive or {}), split)
    keep = list(range(len(ps)))
    if exclude:
        n_ex = int(exclude.get("max_images", 0))
        if n_ex <= 0 or n_ex >= len(ps):
            raise EdgeClipError(f"exclude.max_images must be in 1..{len(ps) - 1}, got {n_ex}")
        drawn = set(random.Random(int(exclude.get("seed", 0))).sample(range(len(ps)), n_ex))
        keep = [i for i in keep if i not in drawn]
    if max_images and len(keep) > max_images:
        keep = sorted(random.Random(seed).sample(keep, max_images))
    if len(keep) < len(ps):
        ps = ps.subset(keep)
    if not ps.classes:
        raise EdgeClipError(f"{data}: evaluation needs class sub-folders to know the true labels")
    d = preload_pairs(ps, model.specs, pre.size)
    named = dict(onnx) if isinstance(onnx, dict) else {Path(p).stem: p for p in onnx}
    if not isinstance(onnx, dict) and len(named) < len(onnx):
        raise EdgeClipError("two int8 exports share a file name: name them ({name: qat.json, ...})")
    models = {
        "fp32": torch_embedder(model, teacher, pre.size),
        **{k: exported_embedder(p, teacher) for k, p in named.items()},
    }
    res = evaluate_pairs(
        d,
        ps.classes,
        ps.primary,
        ps.modalities,
        models,
        teacher=teacher,
        templates=templates,
        class_subset=list(classes) if classes else None,
    )
    res["skipped"] = len(d.skipped)
    return res


def rgb_student_embedder(path: str | Path, teacher=None) -> PairEmbedder:
    """A plain (RGB) student checkpoint as a PairEmbedder: any 3-channel [0, 1] batch is resized to its input size
    and normalised as RGB - the baseline of an RGB model fed another modality directly."""
    from edgeclip.models.student import load_student

    model, pre, _ = load_student(path)
    model.eval()
    mean, std = torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1)

    @torch.no_grad()
    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        x = x01.float()
        if x.shape[-1] != pre.size:
            x = F.interpolate(x, size=(pre.size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return model((x - mean) / std)

    return PairEmbedder(f"RGB student {Path(path).name}", f, teacher, "rgb", pre.size)


def agreement_with_teacher(
    data: PairTensors,
    primary: str,
    modalities: Sequence[str],
    models: dict[str, Embed],
    teacher,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    bs: int = 64,
) -> dict:
    """How well each model reads each non-RGB modality, with no human labels: the reference is the teacher's
    reading of the paired RGB frame. Per model and modality: top-1 agreement over the ``labels`` vocabulary
    (prompt ensemble) with the teacher-on-RGB's top-1, and the mean cosine to the teacher's RGB embedding."""
    temb = text_embeddings(teacher, list(labels), templates).numpy()

    def embed(e: Embed, m: str) -> np.ndarray:
        return unit(
            np.concatenate(
                [e(m, data.x[m][i : i + bs]).float().cpu().numpy() for i in range(0, len(data), bs)]
            )
        )

    ref = embed(teacher_embedder(teacher, primary), primary)
    ref_top = topk(ref, temb, 1)[:, 0]
    counts = {labels[i]: int((ref_top == i).sum()) for i in np.unique(ref_top)}
    out: dict = {
        "n": len(data),
        "labels": list(labels),
        "teacher_rgb_label_counts": counts,
        # what always answering the teacher's most common reading would agree: the floor agreement must clear
        "majority_agreement": max(counts.values()) / len(data) if len(data) else 0.0,
    }
    for name, e in models.items():
        out[name] = {}
        for m in modalities:
            if m == primary:
                continue
            emb = embed(e, m)
            top = topk(emb, temb, 1)[:, 0]
            hit = top == ref_top
            out[name][m] = {
                "agreement": float(hit.mean()),
                # the mean over the teacher's readings of the agreement within each: a model that always
                # answers the most common one scores 1 / (readings seen), not the majority share
                "balanced_agreement": float(np.mean([hit[ref_top == c].mean() for c in np.unique(ref_top)])),
                # float32 sums of unit vectors can pass 1 by a rounding step
                "cosine": float(np.clip((emb * ref).sum(1), -1.0, 1.0).mean()),
                "n": len(emb),
            }
    return out


def evaluate_agreement(
    data: str,
    student: str,
    labels: Sequence[str],
    onnx: dict[str, str] | None = None,
    rgb_students: dict[str, str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    derive: dict | None = None,
    modalities: Sequence[str] | None = None,
    split: str | None = None,
) -> dict:
    """:func:`agreement_with_teacher` on a paired folder (its ``split``), for the teacher fed the non-RGB frame as
    if RGB, the stage-1 ``student`` (fp32), its int8 exports (``onnx``: {name: qat.json / ptq.json}) and plain RGB
    students fed the non-RGB frame (``rgb_students``: {name: checkpoint})."""
    from edgeclip.data.pairs import open_pairs, preload_pairs
    from edgeclip.models.pair import load_pair_student
    from edgeclip.models.teachers import teacher_of

    model, pre, ck = load_pair_student(student)
    teacher = teacher_of(ck, f"student {student}", near=student)
    ps = open_pairs(data, list(modalities) if modalities else None, model.primary, dict(derive or {}), split)
    d = preload_pairs(ps, model.specs, pre.size)
    models = {
        "teacher": teacher_embedder(teacher, ps.primary),
        **{k: rgb_student_embedder(p, teacher) for k, p in (rgb_students or {}).items()},
        "fp32": torch_embedder(model, teacher, pre.size),
        **{k: exported_embedder(p, teacher) for k, p in (onnx or {}).items()},
    }
    res = agreement_with_teacher(d, ps.primary, ps.modalities, models, teacher, labels, templates)
    res["skipped"] = len(d.skipped)
    return res
