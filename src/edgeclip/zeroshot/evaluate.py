"""Zero-shot evaluation of any embedders on an ImageFolder (class names = folder names): top-1/top-5 per model,
agreement and retention against the teacher. Export's bundle accuracy and the benchmarks call the same loop."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.modality import ModalityError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names
from edgeclip.data.sources import labelled_source
from edgeclip.zeroshot.embedder import Embedder, load_for
from edgeclip.zeroshot.scores import accuracy, topk, unit


def iter_embeddings(embedder: Embedder, records, batch_size: int, skipped: list, progress: bool = False):
    """The one loop over images: yields (embeddings (B, D), record indices) per batch of readable images;
    unreadable ones are appended to ``skipped`` and left out."""
    it = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc=embedder.name[:40], mininterval=2.0, leave=False)
    batch, idx = [], []
    for i, r in enumerate(it):
        try:
            batch.append(load_for(embedder, r))
            idx.append(i)
        except (ImageLoadError, ModalityError) as e:
            skipped.append(str(e))
            continue
        if len(batch) >= batch_size:
            yield embedder.embed(batch), idx
            batch, idx = [], []
    if batch:
        yield embedder.embed(batch), idx


def predict(
    embedder: Embedder, records, class_emb: np.ndarray, batch_size: int = 128, progress: bool = False
):
    """Zero-shot predictions over images: -> (top-5 class indices (N, <=5), kept record indices,
    skipped reasons, seconds). Unreadable images are skipped and counted."""
    preds, kept, skipped = [], [], []
    t0 = time.perf_counter()
    for emb, idx in iter_embeddings(embedder, records, batch_size, skipped, progress):
        preds.append(topk(emb, class_emb, 5))
        kept.extend(idx)
    dt = time.perf_counter() - t0
    k = min(5, len(class_emb))
    return (np.concatenate(preds) if preds else np.zeros((0, k), dtype=np.int64)), kept, skipped, dt


def evaluate(
    teacher: Embedder | None,
    students: dict[str, Embedder],
    data: str,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 128,
    max_images: int = 0,
    progress: bool = False,
) -> dict:
    if batch_size < 1 or max_images < 0:
        raise EdgeClipError(f"batch_size must be >= 1 and max_images >= 0, got {batch_size} and {max_images}")
    src, recs = labelled_source(data, "evaluation", max_images, seed=0)
    names = class_names(src.classes)
    y_all = np.array([r.label for r in recs])
    out: dict = {"data": str(data), "classes": names, "templates": list(templates)}
    results = {}
    models = ([("teacher", teacher)] if teacher is not None else []) + list(students.items())
    if not models:
        raise EdgeClipError("nothing to evaluate: give --teacher and/or --student")
    for role, emb in models:
        temb = emb.text(names, templates)
        top, kept, skipped, dt = predict(emb, recs, temb, batch_size, progress)
        results[role] = {"top": top, "kept": kept}
        acc = accuracy(top, y_all[kept])
        out[f"{role}_top1"], out[f"{role}_top5"] = acc["top1"], acc["top5"]
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
                out[f"{role}_retention" if role != "student" else "retention"] = (
                    out[f"{role}_top1"] / out["teacher_top1"]
                )
    return out


def tensor_top1(model, x, y, text_emb=None, bs: int = 500) -> float:
    """Top-1 of a torch ``model`` on preprocessed tensors (validation while training): zero-shot against
    ``text_emb`` (C, D) when given, else ``model`` returns class logits itself (the LiT model)."""
    import torch

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        outs = (
            np.concatenate([model(x[i : i + bs].to(dev)).float().cpu().numpy() for i in range(0, len(x), bs)])
            if len(x)
            else np.zeros((0, 1), np.float32)
        )
    model.train(was)
    top = topk(outs, text_emb.cpu().numpy(), 1) if text_emb is not None else outs.argmax(1)[:, None]
    return accuracy(top, np.asarray(y))["top1"]


def embed_records(embedder: Embedder, records, batch_size: int = 128):
    """-> (embeddings (N, D) of the readable images, kept record indices, skipped reasons)."""
    embs, kept, skipped = [], [], []
    for emb, idx in iter_embeddings(embedder, records, batch_size, skipped):
        embs.append(emb)
        kept.extend(idx)
    return (np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)), kept, skipped


def evaluate_retrieval(
    teacher: Embedder | None,
    students: dict[str, Embedder],
    captions: str,
    images: str | None = None,
    split: str | None = None,
    batch_size: int = 128,
    max_images: int = 0,
) -> dict:
    """Image->text and text->image Recall@1/5/10 of each model on a caption set in the standard protocol (every
    image with all of its captions; the texts are embedded by the model's teacher text tower)."""
    from edgeclip.data.captions import load_captions
    from edgeclip.zeroshot.scores import retrieval

    if batch_size < 1 or max_images < 0:
        raise EdgeClipError(f"batch_size must be >= 1 and max_images >= 0, got {batch_size} and {max_images}")
    cs = load_captions(captions, images, split)
    items = cs.items[:max_images] if max_images else cs.items
    models = ([("teacher", teacher)] if teacher is not None else []) + list(students.items())
    if not models:
        raise EdgeClipError("nothing to evaluate: give --teacher and/or --student")
    out: dict = {"data": str(captions), "split": split, "skipped": dict(cs.skipped)}
    for role, emb in models:
        img, kept, bad = embed_records(emb, [it.record() for it in items], batch_size)
        texts, owner = [], []
        for j, i in enumerate(kept):
            texts += items[i].captions
            owner += [j] * len(items[i].captions)
        txt = np.concatenate([emb.encode_texts(texts[k : k + 256]) for k in range(0, len(texts), 256)])
        out.update({f"{role}_{k}": v for k, v in retrieval(img, txt, owner).items()})
        out["n_images"], out["n_captions"] = len(kept), len(texts)
        if bad:
            out.setdefault("unreadable", {})[role] = len(bad)
    for role in (
        students if teacher is not None else ()
    ):  # what users distil for: the share of the teacher kept
        for d in ("t2i", "i2t"):
            t = out.get(f"teacher_{d}_r5")
            out[f"{role}_retention_{d}_r5"] = out[f"{role}_{d}_r5"] / t if t else None
    return out


def _query(q) -> tuple[str, list[str]]:
    """A query is a text, or {text, must: [words]} (the words every caption-checked hit must mention)."""
    if isinstance(q, str):
        return q, []
    if isinstance(q, dict) and isinstance(q.get("text"), str):
        return q["text"], [str(w).lower() for w in q.get("must") or []]
    raise EdgeClipError(f"a query is a text or {{text: ..., must: [words]}}, got {q!r}")


def _mentions(captions: Sequence[str], words: Sequence[str]) -> bool:
    """Every word (``a|b`` = either) appears in the captions, as itself or with a plural s/es."""
    toks = {w.strip(".,!?;:'\"()").lower() for c in captions for w in c.split()}
    return all(any(t in (a, a + "s", a + "es") for a in alts.split("|") for t in toks) for alts in words)


def search_images(
    teacher: Embedder | None,
    students: dict[str, Embedder],
    photos,
    queries: Sequence,
    images: str | None = None,
    split: str | None = None,
    k: int = 5,
    batch_size: int = 128,
    max_images: int = 0,
) -> dict:
    """Free-text image search: each model's top-``k`` photos for each query (name, score and, on a caption set,
    the photo's first caption), its overlap with the teacher's top-``k``, and, for a query with ``must`` words on
    a caption set, caption-checked precision@k (the share of hits whose human captions mention every word): a
    grounded figure, not only a picture. ``photos``: a captions file (Flickr token.txt / COCO JSON, with
    ``images`` and ``split``), any image source spec (folder, list file, tar, ...) or image records."""
    from pathlib import Path

    qs = [_query(q) for q in queries]
    if not qs:
        raise EdgeClipError("no queries: give at least one text")
    if k < 1:
        raise EdgeClipError(f"k must be >= 1, got {k}")
    records, caps = _search_photos(photos, images, split)
    if max_images:
        records, caps = records[:max_images], caps[:max_images]
    if not records:
        raise EdgeClipError(f"no photos in {photos}")
    models = ([("teacher", teacher)] if teacher is not None else []) + list(students.items())
    if not models:
        raise EdgeClipError("nothing to search with: give a teacher and/or students")
    data = str(photos) if isinstance(photos, (str, Path)) else f"{len(records)} images"
    out: dict = {"data": data, "split": split, "k": k, "queries": [q for q, _ in qs], "models": {}}
    tops: dict[str, np.ndarray] = {}
    for role, emb in models:
        img, kept, bad = embed_records(emb, records, batch_size)
        if not kept:
            raise EdgeClipError(f"{role}: none of the {len(records)} photos could be read")
        sims = unit(emb.encode_texts([q for q, _ in qs])) @ unit(img).T  # (Q, N)
        top = np.argsort(-sims, axis=1)[:, : min(k, len(kept))]
        tops[role] = np.asarray(kept)[top]
        res = [
            _query_row(qi, q, must, role, top, sims, kept, records, caps, tops)
            for qi, (q, must) in enumerate(qs)
        ]
        m: dict = {"name": emb.name, "results": res, "n_images": len(kept)}
        prec = [r["precision_at_k"] for r in res if "precision_at_k" in r]
        if prec:
            m["mean_precision_at_k"] = float(np.mean(prec))
        if role != "teacher" and "teacher" in tops:
            m["mean_teacher_overlap"] = float(np.mean([r["teacher_overlap"] for r in res]))
        if bad:
            m["unreadable"] = len(bad)
        out["models"][role] = m
    return out


def _search_photos(photos, images, split) -> tuple[list, list[list[str]]]:
    """(image records, their human captions: [] when the photos have none) of a captions file, a source spec or
    records."""
    from pathlib import Path

    from edgeclip.data.sources import open_source

    if not isinstance(photos, (str, Path)):
        records = list(photos)
        return records, [[] for _ in records]
    if Path(photos).is_file() and (images is not None or split is not None or _is_captions(str(photos))):
        from edgeclip.data.captions import load_captions

        cs = load_captions(photos, images, split)
        return [it.record() for it in cs.items], [list(it.captions) for it in cs.items]
    records = list(open_source(photos))
    return records, [[] for _ in records]


def _query_row(qi, q, must, role, top, sims, kept, records, caps, tops) -> dict:
    """One query's hits for one model, with caption-checked precision@k and the overlap with the teacher."""
    hits = []
    for j in top[qi]:
        r = records[kept[j]]
        h = {"image": r.name, "path": str(r.path), "score": round(float(sims[qi, j]), 4)}
        if caps[kept[j]]:
            h["caption"] = caps[kept[j]][0]
        hits.append(h)
    row = {"query": q, "hits": hits}
    if must and any(caps):
        row["must"] = must
        row["precision_at_k"] = float(np.mean([_mentions(caps[kept[j]], must) for j in top[qi]]))
    if role != "teacher" and "teacher" in tops:
        row["teacher_overlap"] = len(set(tops[role][qi]) & set(tops["teacher"][qi])) / top.shape[1]
    return row


def _is_captions(path: str) -> bool:
    """A .json is a COCO/Karpathy caption file; a .txt is a Flickr token file when its lines hold 'IMAGE#N<TAB>'
    (a plain list of image paths is an image source; other caption files name their --images)."""
    if path.endswith(".json"):
        return True
    if not path.endswith(".txt"):
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.readline()
    return "\t" in head or "#" in head.split(",")[0]
