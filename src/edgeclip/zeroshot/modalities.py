"""Zero-shot top-1 per modality (EdgeVL): the teacher on RGB, fp32 students and int8 ONNX models on every
modality; a loop over modalities around the shared scores of ``edgeclip.zeroshot.scores``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import read_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.pairs import PairTensors, normalize_modality
from edgeclip.models.pair import PairStudent
from edgeclip.zeroshot.scores import accuracy, topk
from edgeclip.zeroshot.text import text_embeddings

# an embedder: (modality, [0,1] batch after the data-side adapter) -> (B, D) embeddings
Embed = Callable[[str, torch.Tensor], torch.Tensor]


def torch_embedder(model: PairStudent) -> Embed:
    model.eval()

    @torch.no_grad()
    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        return model.embed_unit(x01, m)

    return f


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


def onnx_embedder(exports: dict[str, str], specs: dict) -> Embed:
    """Embedder over exported ONNX models (one per modality, possibly shared)."""
    sess = onnx_sessions(exports)

    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        if m not in sess:
            raise EdgeClipError(f"no ONNX model for modality {m} (have: {', '.join(sess)})")
        s = sess[m]
        x = normalize_modality(x01, specs[m]).numpy()
        return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x})[0])

    return f


def exported_embedder(result_json: str | Path) -> Embed:
    """Embedder of a ``qat.json`` / ``ptq.json`` written by ``edgeclip edgevl qat`` / ``edgeclip edgevl ptq``."""
    from edgeclip.data.pairs import ModalitySpec

    r = read_json(result_json)
    specs = {m: ModalitySpec.from_dict(d) for m, d in r["specs"].items()}
    return onnx_embedder(r["exports"], specs)


def teacher_embedder(teacher, primary: str) -> Embed:
    @torch.no_grad()
    def f(m: str, x01: torch.Tensor) -> torch.Tensor:
        if m != primary:
            raise EdgeClipError("the teacher only sees RGB")
        x = x01.float()
        if x.shape[-1] != teacher.image_size:
            x = F.interpolate(x, size=(teacher.image_size,) * 2, mode="bicubic", align_corners=False).clamp(
                0, 1
            )
        mean = torch.tensor(teacher.mean).view(1, -1, 1, 1)
        std = torch.tensor(teacher.std).view(1, -1, 1, 1)
        return teacher.encode_image((x - mean) / std)

    return f


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
        embed(modality, data.x[modality][i : i + bs]).float().cpu().numpy() for i in range(0, len(data), bs)
    ]
    dt = time.perf_counter() - t0
    n = sum(len(e) for e in embs)
    top1 = accuracy(topk(np.concatenate(embs), text_emb.numpy(), 1), labels.numpy())["top1"] if n else 0.0
    return {"top1": top1, "n": n, "images_per_s": n / dt if dt > 0 else 0.0}


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
    out["teacher"] = {primary: zero_shot(teacher_embedder(teacher, primary), data, primary, temb, labels)}
    for name, emb in models.items():
        out[name] = {m: zero_shot(emb, data, m, temb, labels) for m in modalities}
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
) -> dict:
    """Top-1 per modality on labelled paired data: the teacher (recorded by the student) on RGB, the stage-1
    student fp32 and each int8 export (qat.json / ptq.json; a list is named by file stem, a dict by its keys)
    on every modality. ``max_images``: a seeded sample. ``exclude: {max_images: N, seed: S}`` leaves out the
    N pairs a training run with those settings drew from the same folder: a validation split of a train folder."""
    import random

    from edgeclip.data.pairs import open_pairs, preload_pairs
    from edgeclip.models.pair import load_pair_student
    from edgeclip.models.teachers import teacher_of

    model, pre, ck = load_pair_student(student)
    teacher = teacher_of(ck, f"student {student}", near=student)
    ps = open_pairs(data, list(modalities) if modalities else None, model.primary, dict(derive or {}))
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
    models = {"fp32": torch_embedder(model), **{k: exported_embedder(p) for k, p in named.items()}}
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
