"""Zero-shot evaluation of a teacher and its students on an ImageFolder (class names = folder names)."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.data.sources import labelled_source
from edgeclip.zeroshot.label import Embedder
from edgeclip.zeroshot.text import DEFAULT_TEMPLATES


def class_names(classes: Sequence[str]) -> List[str]:
    return [c.replace("_", " ") for c in classes]


@torch.no_grad()
def predict(embedder: Embedder, records, text_emb: torch.Tensor, batch_size: int = 128, progress: bool = False):
    """Return (top5 indices (N,5) tensor, kept record indices, skipped reasons, seconds)."""
    preds, kept, skipped, batch, idx = [], [], [], [], []
    t0 = time.perf_counter()
    it = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc=embedder.name[:40], mininterval=2.0, leave=False)

    def flush():
        e = embedder.embed(batch)
        k = min(5, text_emb.shape[0])
        preds.append((e @ text_emb.to(e.device).t()).topk(k, dim=-1).indices.cpu())
        kept.extend(idx)
        batch.clear()
        idx.clear()

    for i, r in enumerate(it):
        try:
            batch.append(r.load())
            idx.append(i)
        except ImageLoadError as e:
            skipped.append(str(e))
            continue
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    dt = time.perf_counter() - t0
    return (torch.cat(preds) if preds else torch.zeros(0, 5, dtype=torch.long)), kept, skipped, dt


def evaluate(teacher: Optional[Embedder], students: Dict[str, Embedder], data: str,
             templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 128, max_images: int = 0,
             progress: bool = False) -> Dict:
    src, recs = labelled_source(data, "evaluation", max_images, seed=0)
    names = class_names(src.classes)
    y_all = torch.tensor([r.label for r in recs])
    out: Dict = {"data": str(data), "classes": names, "templates": list(templates)}
    results = {}
    models = ([("teacher", teacher)] if teacher is not None else []) + list(students.items())
    if not models:
        raise EdgeClipError("nothing to evaluate: give --teacher and/or --student")
    for role, emb in models:
        temb = emb.text(names, templates)
        top, kept, skipped, dt = predict(emb, recs, temb, batch_size, progress)
        y = y_all[kept]
        results[role] = {"top": top, "kept": kept}
        out[f"{role}_top1"] = float((top[:, 0] == y).float().mean()) if len(y) else 0.0
        out[f"{role}_top5"] = float((top == y[:, None]).any(1).float().mean()) if len(y) else 0.0
        out[f"{role}_images_per_s"] = len(kept) / dt if dt > 0 else 0.0
        out[f"{role}_name"] = emb.name
        out.setdefault("skipped", {})[role] = len(skipped)
        if skipped:
            out.setdefault("skipped_examples", skipped[:5])
    out["n"] = len(results[models[0][0]]["kept"])
    if "teacher" in results:
        tt = results["teacher"]
        tmap = dict(zip(tt["kept"], tt["top"][:, 0].tolist()))
        for role in students:
            st = results[role]
            pairs = [(tmap[i], p) for i, p in zip(st["kept"], st["top"][:, 0].tolist()) if i in tmap]
            agree = sum(a == b for a, b in pairs) / max(1, len(pairs))
            key = "agreement" if role == "student" else f"{role}_agreement"
            out[key] = agree
            if out["teacher_top1"] > 0:
                out[f"{role}_retention" if role != "student" else "retention"] = out[f"{role}_top1"] / out["teacher_top1"]
    return out


@torch.no_grad()
def tensor_top1(model, x: torch.Tensor, y: torch.Tensor, text_emb: Optional[torch.Tensor] = None, bs: int = 500) -> float:
    """Top-1 of ``model`` on preprocessed tensors: zero-shot against ``text_emb`` (C, D) when given,
    else ``model`` returns class logits itself (e.g. the LiT model while training)."""
    import torch.nn.functional as F

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), bs):
        out = model(x[i:i + bs].to(dev)).float()
        if text_emb is not None:
            out = F.normalize(out, dim=-1) @ text_emb.to(dev).t()
        correct += (out.argmax(1).cpu() == y[i:i + bs]).sum().item()
    model.train(was)
    return correct / max(1, len(x))
