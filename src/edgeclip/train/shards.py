"""Reinforced shards (MobileCLIP's DataCompDR layout, our view spec): WebDataset tar shards that carry each image
with its K cached teacher embeddings and the view parameters (crop box, flip) that produced them, so a distillation
on many nodes streams images and targets together, split by node and worker, with no shared cache index.

A sample of ``shard-NNNNNN.tar``: ``KEY.<ext>`` (the image bytes as they were), ``KEY.emb.npy`` ((views, dim)
float16), ``KEY.views.json`` ({"key": the cache key, "boxes": [[x0, y0, x1, y1] per view], "flips": [...]}) and
``KEY.cls`` when the source has labels. ``shards-rankR-of-N.json`` beside them, one per worker (no worker waits
for another): the cache's teacher, views and view spec, and the sample count of each shard that worker wrote, so
a distillation knows its epoch length without reading the shards.
Shard c holds the cache's chunk c (the same fixed chunks as the cache build): worker r of N writes shards
c = r, r + N, ... , each atomically, so many workers write them as fast as one writes 1/N of them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, read_json, write_json
from edgeclip.data.sources import ImageRecord
from edgeclip.data.transforms import ViewSpec, view_params

SHARDS_FORMAT = "edgeclip-reinforced-shards/1"


def _image_bytes(r: ImageRecord) -> tuple[bytes, str]:
    if r.data is not None:
        return r.data, "jpg"
    ext = (r.path.suffix.lstrip(".").lower() or "jpg") if r.path else "jpg"
    return Path(r.path).read_bytes(), {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)


def write_shards(
    source: Iterable[ImageRecord], cache, out: str | Path, chunk: int, rank: int = 0, world: int = 1
) -> dict[str, Any]:
    """Shards of ``source`` (listing order, ``chunk`` records per shard) with ``cache``'s embeddings; this
    worker writes shards ``rank, rank + world, ...``; an existing shard is kept (resume). -> shards.json."""
    import webdataset as wds

    from edgeclip.data.sources import chunks

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = cache.view_spec
    counts: dict[str, int] = {}
    for c, recs in enumerate(chunks(source, chunk)):
        if c % world != rank:
            continue
        name = f"shard-{c:06d}.tar"
        held = [r for r in recs if r.key in cache]
        if not held:
            continue
        counts[name] = len(held)
        if (out / name).is_file():
            continue
        with atomic_path(out / name) as tmp:
            with wds.TarWriter(str(tmp)) as tw:
                for i, r in enumerate(held):
                    img, ext = _image_bytes(r)
                    buf = io.BytesIO()
                    np.save(buf, np.asarray(cache[r.key]))
                    vp = [view_params(r.key, v, spec) for v in range(cache.views)]
                    sample = {
                        "__key__": f"{c:06d}{i:05d}",
                        ext: img,
                        "emb.npy": buf.getvalue(),
                        "views.json": json.dumps(
                            {"key": r.key, "boxes": [list(b) for b, _ in vp], "flips": [f for _, f in vp]}
                        ).encode(),
                    }
                    if r.label is not None:
                        sample["cls"] = str(r.label).encode()
                    tw.write(sample)
    meta = {
        "format": SHARDS_FORMAT,
        "teacher": cache.teacher,
        "views": cache.views,
        "view_spec": cache.meta["view_spec"],
        "dim": cache.dim,
        "rank": rank,
        "world": world,
        "shards": counts,
    }
    for old in out.glob("shards-rank*-of-*.json"):  # another worker count's records: this run's replace them
        if not old.name.endswith(f"-of-{world}.json"):
            old.unlink(missing_ok=True)
    write_json(out / f"shards-rank{rank}-of-{world}.json", meta)
    return {"shards": str(out / "shard-*.tar"), "n_shards": len(counts), "n": sum(counts.values())}


class ShardTargets:
    """Teacher targets and view parameters read from each reinforced sample itself (the cache's interface for
    the distillation data path: ``target(record, view)`` and ``view(record, view)``)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.views = int(meta["views"])
        self.dim = int(meta["dim"])
        d = meta["view_spec"]
        self.view_spec = ViewSpec(tuple(d["scale"]), tuple(d["ratio"]), d["flip"], d["seed"])

    @property
    def teacher(self) -> dict:
        return self.meta["teacher"]

    def check_teacher(self, teacher_desc: dict) -> None:
        from edgeclip.core.errors import CacheMismatchError
        from edgeclip.core.lineage import check_teacher

        check_teacher(
            self.teacher,
            teacher_desc,
            "these reinforced shards",
            views=True,
            fix="build shards with this teacher (edgeclip cache --format wds)",
            error=CacheMismatchError,
        )

    def holds(self, r: ImageRecord) -> bool:
        return r.targets is not None

    def target_of(self, r: ImageRecord, v: int):
        import torch

        return torch.from_numpy(np.load(io.BytesIO(r.targets))[v].astype(np.float32))

    def view_of(self, r: ImageRecord, v: int) -> tuple[tuple[float, ...], bool]:
        return tuple(r.views["boxes"][v]), bool(r.views["flips"][v])

    def source_key(self, r: ImageRecord) -> str:
        return r.views["key"]


def shard_meta(spec: str) -> dict | None:
    """The merged worker records beside the shards of ``spec`` when they are reinforced shards (None for plain
    WebDataset shards); shards whose workers have not all finished are one line."""
    from edgeclip.data.sources import expand_shards

    try:
        first = expand_shards(spec)[0]
    except (EdgeClipError, IndexError):
        return None
    folder = Path(first).parent
    recs = sorted(folder.glob("shards-rank*-of-*.json"))
    if not recs:
        return None
    metas = [read_json(p) for p in recs]
    for p, m in zip(recs, metas):
        if m.get("format") != SHARDS_FORMAT:
            raise EdgeClipError(f"{p}: unsupported reinforced-shards format {m.get('format')!r}")
    world = int(metas[0]["world"])
    if sorted(int(m["rank"]) for m in metas) != list(range(world)):
        raise EdgeClipError(
            f"the reinforced shards in {folder} are incomplete (records of {len(metas)} of {world} workers); "
            "run the same `edgeclip cache --format wds` again to finish them"
        )
    shards = {k: v for m in metas for k, v in m["shards"].items()}
    return {
        **{k: metas[0][k] for k in ("format", "teacher", "views", "view_spec", "dim")},
        "shards": shards,
        "n": sum(shards.values()),
    }
