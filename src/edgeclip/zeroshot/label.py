"""Label images (whole, grid cells or boxes) with any embedder: a teacher, a distilled student or a bundle."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.modality import ModalityError
from edgeclip.data.sources import ImageRecord
from edgeclip.data.transforms import apply_view, grid_boxes
from edgeclip.zeroshot.embedder import Embedder, load_for


def read_boxes(path: str | Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{"image.jpg": [[x0, y0, x1, y1], ...]}`` in pixels (values > 1) or relative (all <= 1)."""
    p = Path(path)
    if not p.is_file():
        raise EdgeClipError(f"boxes file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EdgeClipError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise EdgeClipError(f"{p}: expected an object mapping image names to box lists")
    out = {}
    for k, boxes in d.items():
        if not isinstance(boxes, list):
            raise EdgeClipError(f"{p}: the boxes of {k} must be a list of [x0, y0, x1, y1]")
        for b in boxes:
            if not isinstance(b, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in b
            ):
                raise EdgeClipError(f"{p}: bad box {b!r} for {k} (need four numbers [x0, y0, x1, y1])")
            if len(b) != 4 or not (b[2] > b[0] and b[3] > b[1]):
                raise EdgeClipError(f"{p}: bad box {b} for {k} (need [x0, y0, x1, y1] with x1>x0, y1>y0)")
        out[k] = [tuple(map(float, b)) for b in boxes]
    return out


def _regions(img, name: str, grid: int, boxes: dict | None) -> list[tuple[list | None, object]]:
    if (boxes is not None or (grid and grid > 1)) and not hasattr(img, "crop"):
        raise EdgeClipError(
            "--grid and --boxes crop RGB photos; a bundle of another modality labels whole frames"
        )
    if boxes is not None:
        bl = boxes.get(name) or boxes.get(Path(name).name)
        if not bl:
            return []
        W, H = img.size
        out = []
        for b in bl:
            rel = b if max(b) <= 1.0 else (b[0] / W, b[1] / H, b[2] / W, b[3] / H)
            rel = tuple(min(1.0, max(0.0, v)) for v in rel)
            out.append((list(b), apply_view(img, rel, False)))
        return out
    if grid and grid > 1:
        W, H = img.size
        return [
            ([round(b[0] * W), round(b[1] * H), round(b[2] * W), round(b[3] * H)], apply_view(img, b, False))
            for b in grid_boxes(grid)
        ]
    return [(None, img)]


def label_images(
    records: Iterable[ImageRecord],
    embedder: Embedder,
    labels: Sequence[str],
    templates: Sequence[str],
    topk: int = 5,
    grid: int = 0,
    boxes: dict | None = None,
    batch_size: int = 32,
    stats: dict | None = None,
    examples: dict[str, list] | None = None,
) -> Iterator[dict]:
    """Yield one row per image (or region): image, region, labels, scores (softmax), cosines. ``examples``:
    {label: example images}, labels made from images (queries by example) beside the text labels."""
    if topk < 1:
        raise EdgeClipError(f"topk must be >= 1, got {topk}")
    if grid < 0 or grid > 16:
        raise EdgeClipError(f"grid must be between 0 and 16 cells a side, got {grid}")
    labels, temb = classifier(embedder, labels, templates, examples)
    scale = float(getattr(embedder.teacher, "logit_scale", 100.0))
    k = max(1, min(topk, len(labels)))
    stats = stats if stats is not None else {}
    stats.setdefault("images", 0)
    stats.setdefault("skipped", [])
    pending: list[tuple[str, list | None, object]] = []

    for r in records:
        try:
            img = load_for(embedder, r)
        except (ImageLoadError, ModalityError) as e:
            stats["skipped"].append(str(e))
            continue
        stats["images"] += 1
        for region, im in _regions(img, r.name, grid, boxes):
            pending.append((r.name, region, im))
        if len(pending) >= batch_size:
            yield from _emit(pending, embedder, temb, scale, k, labels)
    yield from _emit(pending, embedder, temb, scale, k, labels)


def example_embeddings(embedder: Embedder, examples: dict[str, list]) -> np.ndarray:
    """(E, D): per label, the prototype of its example images as ``embedder`` embeds them."""
    from edgeclip.core.images import load_image
    from edgeclip.runtime.bundle import prototype

    rows = []
    for name, srcs in examples.items():
        if not srcs:
            raise EdgeClipError(f"label {name!r}: no example images")
        try:
            imgs = [s if hasattr(s, "convert") else load_image(s) for s in srcs]
        except ImageLoadError as e:
            raise EdgeClipError(f"example image of {name!r}: {e}") from None
        rows.append(prototype(embedder.embed(imgs)))
    return np.stack(rows)


def classifier(
    embedder: Embedder,
    labels: Sequence[str],
    templates: Sequence[str],
    examples: dict[str, list] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Label names and their (L, D) embeddings: the text labels' from the embedder's text side, then the example
    labels' prototypes."""
    labels = list(labels)
    parts = [np.asarray(embedder.text(labels, templates), dtype=np.float32)] if labels else []
    if examples:
        clash = [n for n in examples if n in labels]
        if clash:
            raise EdgeClipError(f"{clash[0]!r} is both a text label and an example label")
        parts.append(example_embeddings(embedder, examples))
        labels += list(examples)
    if not labels:
        raise EdgeClipError("no labels: give --labels and/or --example LABEL=images")
    return labels, np.concatenate(parts)


def _emit(pending, embedder, temb, scale, k, labels):
    if not pending:
        return
    cos = embedder.embed([p[2] for p in pending]) @ temb.T
    logits = scale * cos
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    top = np.argsort(-prob, axis=1, kind="stable")[:, :k]
    for j, ((name, region, _), idx) in enumerate(zip(pending, top.tolist())):
        row = {
            "image": name,
            "labels": [labels[i] for i in idx],
            "scores": [round(float(prob[j, i]), 4) for i in idx],
            "cosines": [round(float(cos[j, i]), 4) for i in idx],
        }
        if region is not None:
            row["region"] = region
        yield row
    pending.clear()


def write_rows(rows, out: Path | None, echo=print) -> int:
    """Label rows as JSON lines (to ``echo`` without ``out``, or a .jsonl file) or a .csv with one line per
    (image, region, rank); -> rows written. Rows stream: nothing is held in memory."""
    import csv
    import json

    n = 0
    if out is None:
        for r in rows:
            echo(json.dumps(r, ensure_ascii=False))
            n += 1
        return n
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        csv_out = csv.writer(fh) if out.suffix.lower() == ".csv" else None
        if csv_out:
            csv_out.writerow(["image", "region", "rank", "label", "score", "cosine"])
        for r in rows:
            if csv_out is None:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            else:
                region = json.dumps(r.get("region")) if r.get("region") else ""
                for i, (lb, sc, c) in enumerate(zip(r["labels"], r["scores"], r["cosines"])):
                    csv_out.writerow([r["image"], region, i + 1, lb, sc, c])
            n += 1
    return n
