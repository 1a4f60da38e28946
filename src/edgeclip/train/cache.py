"""Teacher-embedding cache: teacher image embeddings computed once, stored fp16 and memory-mapped.

Layout of a cache folder::

    meta.json            teacher id + preprocessing + views + dim (a cache refuses another teacher)
    part-00000.npy ...   (n, views, dim) float16 chunks, each written atomically when complete
    part-00000.keys.json the keys (path|size|mtime, or shard|size|mtime#sample) of that chunk
    failed.jsonl         images that could not be decoded, with the reason (skipped, counted)

A killed build resumes where it stopped (at most one chunk is recomputed); adding images later
only computes the new ones, and a changed file (new size/mtime) gets a new key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeclip.core.errors import CacheMismatchError, EdgeClipError, ImageLoadError
from edgeclip.core.io import atomic_path, exclusive_lock, read_json, write_json
from edgeclip.data.sources import ImageRecord, ImageSource
from edgeclip.data.transforms import ViewSpec, apply_view, view_params

CACHE_FORMAT = "edgeclip-cache/1"


class EmbeddingCache:
    """Read side: ``cache[key]`` -> (views, dim) float16 array (memory-mapped)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mp = self.root / "meta.json"
        if not mp.is_file():
            raise EdgeClipError(
                f"{self.root} is not an edgeclip cache (no meta.json); build one with `edgeclip cache`"
            )
        self.meta = read_json(mp)
        if self.meta.get("format") != CACHE_FORMAT:
            raise EdgeClipError(f"{self.root}: unsupported cache format {self.meta.get('format')!r}")
        self._index: dict[str, tuple[int, int]] = {}
        self._parts: list[np.ndarray] = []
        for kp in sorted(self.root.glob("part-*.keys.json")):
            arr, keys = self._part(kp)
            self._parts.append(arr)
            for row, k in enumerate(keys):
                self._index[k] = (len(self._parts) - 1, row)
        self.failed = _read_failed(self.root)

    def _part(self, kp: Path) -> tuple[np.ndarray, list]:
        """One chunk: its embeddings (memory-mapped) and keys, checked to agree; a damaged chunk is one line."""
        npy = kp.with_name(kp.name.replace(".keys.json", ".npy"))
        fix = (
            f"delete {kp.name} and {npy.name} and run `edgeclip cache` again (only that chunk is recomputed)"
        )
        try:
            arr = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise EdgeClipError(
                f"cache chunk {npy} is damaged ({str(e).splitlines()[0][:100]}): {fix}"
            ) from None
        keys = read_json(kp)
        dim, views = int(self.meta.get("dim", 0)), int(self.meta.get("views", 0))
        if (
            not isinstance(keys, list)
            or arr.ndim != 3
            or len(keys) != arr.shape[0]
            or arr.shape[1:] != (views, dim)
        ):
            raise EdgeClipError(
                f"cache chunk {npy} holds {tuple(arr.shape)} embeddings for "
                f"{len(keys) if isinstance(keys, list) else '?'} keys (expected (keys, {views}, {dim})): {fix}"
            )
        return arr, keys

    @property
    def teacher(self) -> dict:
        return self.meta["teacher"]

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def view_spec(self) -> ViewSpec:
        d = self.meta["view_spec"]
        return ViewSpec(tuple(d["scale"]), tuple(d["ratio"]), d["flip"], d["seed"])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __getitem__(self, key: str) -> np.ndarray:
        p, r = self._index[key]
        return self._parts[p][r]

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys this cache does not hold."""
        return [k for k in keys if k not in self._index]

    def targets(self, keys: Sequence[str], view: int | None = None):
        """The one way training reads teacher targets: float32 tensors (N, views, D), or (N, D) of one ``view``."""
        import torch

        arr = self.get_many(keys)
        return torch.from_numpy((arr if view is None else arr[:, view]).astype(np.float32))

    def target(self, key: str, view: int):
        """One sample's teacher target (D,) as float32, for datasets that read sample by sample."""
        import torch

        return torch.from_numpy(np.asarray(self[key][view], dtype=np.float32))

    def get_many(self, keys: Sequence[str]) -> np.ndarray:
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise EdgeClipError(
                f"{len(missing)} images are not in the cache {self.root} (first: {missing[0].split('|')[0]}); "
                "run `edgeclip cache` on the same data first"
            )
        return np.stack([self[k] for k in keys])

    def check_teacher(self, teacher_desc: dict) -> None:
        mine = self.teacher
        for field in ("id", "preprocess"):
            if mine.get(field) != teacher_desc.get(field):
                raise CacheMismatchError(
                    f"cache {self.root} was built with teacher {mine.get('id')} "
                    f"({field} differs from {teacher_desc.get('id')}); use another --cache folder"
                )


def _read_failed(root: Path) -> dict[str, str]:
    fp = root / "failed.jsonl"
    out: dict[str, str] = {}
    if fp.is_file():
        for ln in fp.read_text().splitlines():
            if ln.strip():
                d = json.loads(ln)
                out[d["key"]] = d["error"]
    return out


@dataclass
class CacheSummary:
    root: str
    total: int
    computed: int
    reused: int
    failed: int
    seconds: float
    images_per_s: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _ViewBatch(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[ImageRecord], teacher_pp, views: int, spec: ViewSpec):
        self.records, self.pp, self.views, self.spec = records, teacher_pp, views, spec

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        try:
            img = r.load()
        except ImageLoadError as e:
            return i, None, str(e)
        xs = []
        for v in range(self.views):
            box, flip = view_params(r.key, v, self.spec)
            xs.append(self.pp(apply_view(img, box, flip)))
        return i, torch.stack(xs), None


def _collate(items):
    return items


def build_cache(
    source: ImageSource | Iterable[ImageRecord],
    teacher,
    out: str | Path,
    views: int = 1,
    view_spec: ViewSpec | None = None,
    batch_size: int = 64,
    chunk: int = 1024,
    num_workers: int = 0,
    retry_failed: bool = False,
    progress: bool = True,
) -> CacheSummary:
    """Compute (or complete) the cache of ``source`` under ``out`` with ``teacher``."""
    with exclusive_lock(out, "teacher-embedding cache"):
        return _build_cache(
            source, teacher, out, views, view_spec, batch_size, chunk, num_workers, retry_failed, progress
        )


def _build_cache(
    source, teacher, out, views, view_spec, batch_size, chunk, num_workers, retry_failed, progress
):
    for name, v, least in (
        ("views", views, 1),
        ("batch_size", batch_size, 1),
        ("chunk", chunk, 1),
        ("workers", num_workers, 0),
    ):
        if not isinstance(v, int) or v < least:
            raise EdgeClipError(f"{name} must be >= {least}, got {v}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    view_spec = view_spec or ViewSpec()
    meta = {
        "format": CACHE_FORMAT,
        "teacher": teacher.describe(),
        "views": views,
        "view_spec": view_spec.to_dict(),
        "dim": teacher.embed_dim,
        "dtype": "float16",
        "normalized": True,
        "source": getattr(source, "root", None),
    }
    if (out / "meta.json").is_file():
        old = read_json(out / "meta.json")
        old_t, new_t = old.get("teacher", {}), meta["teacher"]
        if old_t.get("id") != new_t["id"] or old_t.get("preprocess") != new_t["preprocess"]:
            raise CacheMismatchError(
                f"{out} holds embeddings of teacher {old_t.get('id')}, not {new_t['id']}; "
                "refusing to mix teachers (use another --out folder)"
            )
        if old.get("views") != views or old.get("view_spec") != meta["view_spec"]:
            raise CacheMismatchError(
                f"{out} was built with views={old.get('views')} {old.get('view_spec')}; "
                f"asked for views={views} {meta['view_spec']} (use another --out folder)"
            )
    else:
        write_json(out / "meta.json", meta)
    have = EmbeddingCache(out)
    failed = dict(have.failed)
    n_parts = len(list(out.glob("part-*.keys.json")))
    t0 = time.time()
    computed = reused = 0
    records = (
        source
        if isinstance(source, list)
        else list(source)
        if not getattr(source, "is_stream", False)
        else None
    )

    def pending_iter() -> Iterator[ImageRecord]:
        nonlocal reused
        for r in records if records is not None else source:
            if r.key in have or (r.key in failed and not retry_failed):
                reused += 1
                continue
            yield r

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(records) if records is not None else None,
            desc="teacher embeddings",
            unit="img",
            mininterval=1.0,
        )
    buf: list[ImageRecord] = []
    dev = teacher.device

    def flush(recs: list[ImageRecord]):
        nonlocal n_parts, computed
        ds = _ViewBatch(recs, teacher.preprocess, views, view_spec)
        dl = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
        )
        embs: list[np.ndarray] = []
        keys: list[str] = []
        new_failed = []
        for items in dl:
            ok = [(i, x) for i, x, err in items if x is not None]
            for i, x, err in items:
                if x is None:
                    new_failed.append({"key": recs[i].key, "name": recs[i].name, "error": err})
            if ok:
                xb = torch.cat([x for _, x in ok]).to(dev)
                with torch.no_grad():
                    e = teacher.encode_image(xb, normalize=True).reshape(len(ok), views, -1)
                embs.append(e.cpu().numpy().astype(np.float16))
                keys.extend(recs[i].key for i, _ in ok)
            if bar is not None:
                bar.update(len(items))
        if new_failed:
            with open(out / "failed.jsonl", "a") as fh:
                for d in new_failed:
                    fh.write(json.dumps(d) + "\n")
                    failed[d["key"]] = d["error"]
        if keys:
            arr = np.concatenate(embs)
            name = f"part-{n_parts:05d}"
            with atomic_path(out / f"{name}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr)
            with atomic_path(
                out / f"{name}.keys.json"
            ) as tmp:  # keys last: a part counts only once both exist
                tmp.write_text(json.dumps(keys))
            n_parts += 1
            computed += len(keys)

    for r in pending_iter():
        buf.append(r)
        if len(buf) >= chunk:
            flush(buf)
            buf = []
    if buf:
        flush(buf)
    if bar is not None:
        bar.update(reused)
        bar.close()
    # remove orphan .npy files of parts whose keys never landed (killed between the two writes)
    for npy in out.glob("part-*.npy"):
        if not npy.with_name(npy.name.replace(".npy", ".keys.json")).exists():
            npy.unlink()
    dt = time.time() - t0
    total = len(records) if records is not None else computed + reused
    return CacheSummary(str(out), total, computed, reused, len(failed), dt, computed / dt if dt > 0 else 0.0)
