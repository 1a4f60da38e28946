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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.core.errors import CacheMismatchError, EdgeClipError, ImageLoadError
from edgeclip.core.io import atomic_path, exclusive_lock, read_json, write_json
from edgeclip.core.lineage import check_teacher
from edgeclip.core.machine import launch_rank
from edgeclip.data.sources import ImageRecord, ImageSource, chunks
from edgeclip.data.transforms import ViewSpec, apply_view, view_params

CACHE_FORMAT = "edgeclip-cache/2"
OLD_FORMATS = ("edgeclip-cache/1",)
INDEX = "index"  # index.json + index.hash.npy + index.pos.npy (edgeclip.data.keyindex)


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def part_names(root: Path) -> list[str]:
    """The complete parts of a cache folder (a part counts once its keys file exists), in name order."""
    return sorted(kp.name[: -len(".keys.json")] for kp in root.glob("part-*.keys.json"))


class EmbeddingCache:
    """Read side: ``cache[key]`` -> (views, dim) float16 array (memory-mapped).

    Opening reads meta.json and the key index (two memory-mapped arrays and a JSON list of parts), never the
    per-part key lists: a cache of a million images opens in milliseconds. A part added or changed since the
    index was written (an interrupted build, a part deleted by hand) makes the index rebuild itself from the
    parts' key lists first."""

    def __init__(self, root: str | Path):
        from edgeclip.data.keyindex import KeyIndex

        self.root = Path(root)
        self.meta = read_cache_meta(self.root)
        names = part_names(self.root)
        idx_json = self.root / f"{INDEX}.json"
        fresh = False
        if idx_json.is_file():
            im = read_json(idx_json)
            fresh = im.get("parts") == names and im.get("stamps") == [self._stamps(n) for n in names]
        if not fresh:
            write_cache_index(self.root, self.meta)
        self._index = KeyIndex(self.root / INDEX)
        self._rows: list[int] = list(self._index.meta["rows"])
        self._parts: list[np.ndarray | None] = [None] * len(self._index.parts)
        self.failed = _read_failed(self.root)

    def _stamps(self, name: str) -> list[int]:
        return _stamp(self.root / f"{name}.npy") + _stamp(self.root / f"{name}.keys.json")

    def _array(self, p: int) -> np.ndarray:
        arr = self._parts[p]
        if arr is None:
            name = self._index.parts[p]
            arr = _load_part(self.root / f"{name}.npy", self._rows[p], self.meta)
            self._parts[p] = arr
        return arr

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
        return self._index.get(key) is not None

    def __getitem__(self, key: str) -> np.ndarray:
        pr = self._index.get(key)
        if pr is None:
            raise KeyError(key)
        return self._array(pr[0])[pr[1]]

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys this cache does not hold."""
        pos = self._index.lookup(list(keys))
        return [k for k, p in zip(keys, pos) if p < 0]

    def targets(self, keys: Sequence[str], view: int | None = None):
        """The one way training reads teacher targets: float32 tensors (N, views, D), or (N, D) of one ``view``."""
        import torch

        arr = self.get_many(keys)
        return torch.from_numpy((arr if view is None else arr[:, view]).astype(np.float32))

    def target(self, key: str, view: int):
        """One sample's teacher target (D,) as float32, for datasets that read sample by sample."""
        import torch

        return torch.from_numpy(np.asarray(self[key][view], dtype=np.float32))

    # the interface the distillation data path reads targets through (reinforced shards have the same one)
    def holds(self, r: ImageRecord) -> bool:
        return r.key in self

    def target_of(self, r: ImageRecord, view: int):
        return self.target(r.key, view)

    def view_of(self, r: ImageRecord, view: int):
        """The crop box and flip of ``view`` of record ``r``: the ones the teacher saw when the cache was built."""
        return view_params(r.key, view, self.view_spec)

    def get_many(self, keys: Sequence[str]) -> np.ndarray:
        pos = self._index.lookup(list(keys))
        if (pos < 0).any():
            missing = [k for k, p in zip(keys, pos) if p < 0]
            raise EdgeClipError(
                f"{len(missing)} images are not in the cache {self.root} (first: {missing[0].split('|')[0]}); "
                "run `edgeclip cache` on the same data first"
            )
        return np.stack([self._array(int(p) >> 32)[int(p) & 0xFFFFFFFF] for p in pos])

    def check_teacher(self, teacher_desc: dict) -> None:
        check_teacher(
            self.teacher,
            teacher_desc,
            f"cache {self.root}",
            views=True,
            fix="use another --cache folder",
            error=CacheMismatchError,
        )


def read_cache_meta(root: Path) -> dict:
    """meta.json of a cache folder, its format checked: an older format is one line naming the command that
    converts it."""
    mp = root / "meta.json"
    if not mp.is_file():
        raise EdgeClipError(
            f"{root} is not an edgeclip cache (no meta.json); build one with `edgeclip cache`"
        )
    meta = read_json(mp)
    fmt = meta.get("format")
    if fmt in OLD_FORMATS:
        raise EdgeClipError(
            f"{root} is an {fmt} cache (no key index); convert it in place with: edgeclip cache-upgrade {root}"
        )
    if fmt != CACHE_FORMAT:
        raise EdgeClipError(f"{root}: unsupported cache format {fmt!r}")
    return meta


def _fix(npy: Path) -> str:
    kp = npy.with_name(npy.name.replace(".npy", ".keys.json"))
    return f"delete {kp.name} and {npy.name} and run `edgeclip cache` again (only that chunk is recomputed)"


def _load_part(npy: Path, rows: int, meta: dict) -> np.ndarray:
    """One chunk's embeddings, memory-mapped and checked against the rows its keys file lists: one line."""
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise EdgeClipError(
            f"cache chunk {npy} is damaged ({str(e).splitlines()[0][:100]}): {_fix(npy)}"
        ) from None
    dim, views = int(meta.get("dim", 0)), int(meta.get("views", 0))
    if arr.ndim != 3 or arr.shape[0] != rows or arr.shape[1:] != (views, dim):
        raise EdgeClipError(
            f"cache chunk {npy} holds {tuple(arr.shape)} embeddings for {rows} keys "
            f"(expected (keys, {views}, {dim})): {_fix(npy)}"
        )
    return arr


def write_cache_index(root: Path, meta: dict) -> dict:
    """(Re)build the key index of a cache folder from its parts' key lists (each part checked against its
    embeddings first); written atomically, so readers see the old index or the new one."""
    from edgeclip.data.keyindex import write_index

    parts, rows, stamps = [], [], []
    for name in part_names(root):
        keys = read_json(root / f"{name}.keys.json")
        if not isinstance(keys, list):
            raise EdgeClipError(
                f"cache chunk {root / name}.keys.json is not a key list: {_fix(root / f'{name}.npy')}"
            )
        _load_part(root / f"{name}.npy", len(keys), meta)
        parts.append((name, keys))
        rows.append(len(keys))
        stamps.append(_stamp(root / f"{name}.npy") + _stamp(root / f"{name}.keys.json"))
    try:
        with exclusive_lock(root, "cache index", name=".lock-index", wait=True):
            im = write_index(root / INDEX, parts, {"rows": rows, "stamps": stamps})
    except PermissionError:
        raise EdgeClipError(
            f"the key index of {root} is out of date and the folder is read-only; run `edgeclip cache-upgrade "
            f"{root}` where it is writable"
        ) from None
    return im


def upgrade_cache(root: str | Path) -> dict:
    """Convert an edgeclip-cache/1 folder in place: the parts stay as they are, a key index is written and the
    format is bumped (meta.json last). A current cache is left as it is."""
    root = Path(root)
    mp = root / "meta.json"
    if not mp.is_file():
        raise EdgeClipError(f"{root} is not an edgeclip cache (no meta.json)")
    meta = read_json(mp)
    if meta.get("format") == CACHE_FORMAT:
        return {
            "root": str(root),
            "format": CACHE_FORMAT,
            "upgraded": False,
            "keys": len(EmbeddingCache(root)),
        }
    if meta.get("format") not in OLD_FORMATS:
        raise EdgeClipError(f"{root}: unsupported cache format {meta.get('format')!r}")
    meta["format"] = CACHE_FORMAT
    im = write_cache_index(root, meta)
    write_json(mp, meta)
    return {"root": str(root), "format": CACHE_FORMAT, "upgraded": True, "keys": im["n"]}


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
    rank: int | None = None,
    world: int | None = None,
) -> CacheSummary:
    """Compute (or complete) the cache of ``source`` under ``out`` with ``teacher``.

    Many workers: launch the same command ``world`` times (torchrun, srun: ``rank``/``world`` default to their
    environment). The source is cut into fixed chunks of ``chunk`` records in listing order; worker ``rank``
    computes chunks ``rank, rank + world, ...``, each written atomically as one part, so the batches, and the
    embeddings, are the same whatever the number of workers. Each worker re-indexes the folder when it is done
    (the last one indexes every part); a killed worker's chunks are computed again by the next run, alone."""
    r0, w0 = launch_rank()
    rank, world = (r0 if rank is None else rank), (w0 if world is None else world)
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise EdgeClipError(f"rank must be in [0, world) and world >= 1, got rank={rank}, world={world}")
    lock = ".lock" if world == 1 else f".lock-rank{rank}"
    with exclusive_lock(out, "teacher-embedding cache", name=lock):
        b = _CacheBuild(Path(out), teacher, views, view_spec or ViewSpec(), batch_size, chunk, num_workers)
        return b.run(source, retry_failed, progress, rank, world)


@dataclass
class CacheConfig:
    """``edgeclip cache``: the teacher's embeddings of ``data`` into ``out``; ``format: wds`` also writes reinforced
    WebDataset shards (each image with its teacher embeddings and view parameters) in OUT/shards."""

    data: str = ""
    teacher: str = ""
    out: str = ""
    views: int = 1
    batch_size: int = 64
    chunk: int = 1024
    workers: int = 0
    kind: str = "auto"  # auto | imagefolder | folder | list | wds
    retry_failed: bool = False
    device: str = "auto"
    format: str = "folder"  # folder | wds

    def __post_init__(self) -> None:
        if self.format not in ("folder", "wds"):
            raise EdgeClipError(f"unknown cache format {self.format!r} (folder, wds)")
        if not (self.data and self.teacher and self.out):
            raise EdgeClipError("a cache needs data, a teacher spec and an --out folder")


def run_cache(cfg: CacheConfig, progress: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Build (or complete) the cache, then the shards when asked; -> (the summary, the sources' skipped lines)."""
    from edgeclip.core.machine import resolve_device
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher

    src = open_source(cfg.data, cfg.kind)
    if cfg.format == "wds" and src.is_stream:
        raise EdgeClipError("--format wds re-shards folders and lists; these images are already shards")
    t = load_teacher(cfg.teacher, device=resolve_device(cfg.device))
    out = Path(cfg.out)
    s = build_cache(
        src,
        t,
        out,
        views=cfg.views,
        batch_size=cfg.batch_size,
        chunk=cfg.chunk,
        num_workers=cfg.workers,
        retry_failed=cfg.retry_failed,
        progress=progress,
    )
    res = s.as_dict()
    if cfg.format == "wds":
        from edgeclip.train.shards import write_shards

        rank, world = launch_rank()
        res["reinforced"] = write_shards(
            src.records, EmbeddingCache(out), out / "shards", cfg.chunk, rank, world
        )
    return res, list(src.skipped)


class _CacheBuild:
    """One worker's build: check the folder's meta, walk its chunks, compute and write the missing ones, index."""

    def __init__(self, out: Path, teacher, views, view_spec, batch_size, chunk, num_workers):
        for name, v, least in (
            ("views", views, 1),
            ("batch_size", batch_size, 1),
            ("chunk", chunk, 1),
            ("workers", num_workers, 0),
        ):
            if not isinstance(v, int) or v < least:
                raise EdgeClipError(f"{name} must be >= {least}, got {v}")
        self.out, self.teacher, self.views, self.spec = out, teacher, views, view_spec
        self.batch_size, self.chunk, self.num_workers = batch_size, chunk, num_workers
        self.computed = self.reused = self.parts_written = 0

    def meta(self, source) -> dict:
        """This build's meta.json; an existing folder must hold the same teacher and views (one line if not)."""
        meta = {
            "format": CACHE_FORMAT,
            "teacher": self.teacher.describe(),
            "views": self.views,
            "view_spec": self.spec.to_dict(),
            "dim": self.teacher.embed_dim,
            "dtype": "float16",
            "normalized": True,
            "source": getattr(source, "root", None),
        }
        out = self.out
        if not (out / "meta.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "meta.json", meta)
            return meta
        old = read_cache_meta(out)
        check_teacher(
            old.get("teacher"),
            meta["teacher"],
            str(out),
            views=True,
            fix="refusing to mix teachers (use another --out folder)",
            error=CacheMismatchError,
        )
        if old.get("views") != self.views or old.get("view_spec") != meta["view_spec"]:
            raise CacheMismatchError(
                f"{out} was built with views={old.get('views')} {old.get('view_spec')}; "
                f"asked for views={self.views} {meta['view_spec']} (use another --out folder)"
            )
        return old

    def run(self, source, retry_failed: bool, progress: bool, rank: int, world: int) -> CacheSummary:
        self.rank, self.world = rank, world
        self.meta(source)
        self._clean_orphans()
        have = EmbeddingCache(self.out)
        self.failed = dict(have.failed)
        t0 = time.time()
        stream = getattr(source, "is_stream", False)
        records = None if stream else (source if isinstance(source, list) else list(source))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            n = None if records is None else len(records)
            bar = tqdm(total=n, desc="teacher embeddings", unit="img", mininterval=1.0)
        total = 0
        for c, recs in enumerate(chunks(records if records is not None else source, self.chunk)):
            total += len(recs)
            if c % world != rank:
                continue
            todo = [r for r in recs if r.key not in have and (retry_failed or r.key not in self.failed)]
            self.reused += len(recs) - len(todo)
            if todo:
                self._compute(c, todo, bar)
            if bar is not None:
                bar.update(len(recs) - len(todo))
        if bar is not None:
            bar.close()
        self._clean_orphans()
        write_cache_index(self.out, read_cache_meta(self.out))
        dt = time.time() - t0
        n_failed = len(_read_failed(self.out))
        return CacheSummary(
            str(self.out),
            total,
            self.computed,
            self.reused,
            n_failed,
            dt,
            self.computed / dt if dt > 0 else 0.0,
        )

    def _compute(self, c: int, recs: list[ImageRecord], bar) -> None:
        """Embed one chunk's missing records; write them as one part (embeddings, then keys: a part counts only
        once both exist); unreadable images go to failed.jsonl."""
        ds = _ViewBatch(recs, self.teacher.preprocess, self.views, self.spec)
        dl = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=_collate
        )
        embs: list[np.ndarray] = []
        keys: list[str] = []
        new_failed = []
        for items in dl:
            ok = [(i, x) for i, x, err in items if x is not None]
            new_failed += [
                {"key": recs[i].key, "name": recs[i].name, "error": err} for i, x, err in items if x is None
            ]
            if ok:
                xb = torch.cat([x for _, x in ok]).to(self.teacher.device)
                with torch.no_grad():
                    e = self.teacher.encode_image(xb, normalize=True).reshape(len(ok), self.views, -1)
                embs.append(e.cpu().numpy().astype(np.float16))
                keys.extend(recs[i].key for i, _ in ok)
            if bar is not None:
                bar.update(len(items))
        if new_failed:
            with open(self.out / "failed.jsonl", "a") as fh:
                for d in new_failed:
                    fh.write(json.dumps(d) + "\n")
                    self.failed[d["key"]] = d["error"]
        if keys:
            from edgeclip.core.io import sha256_text

            name = f"part-{c:06d}-{sha256_text(chr(10).join(keys))[:8]}"
            with atomic_path(self.out / f"{name}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.concatenate(embs))
            _fault_point(self.rank, self.parts_written)
            with atomic_path(self.out / f"{name}.keys.json") as tmp:
                tmp.write_text(json.dumps(keys))
            self.computed += len(keys)
            self.parts_written += 1

    def _clean_orphans(self) -> None:
        """Remove the .npy of this worker's parts whose keys never landed (killed between the two writes); the
        other workers' files are theirs to clean (one of them may be writing its keys this moment)."""
        for npy in self.out.glob("part-*.npy"):
            c = npy.name.split("-")[1].split(".")[0]
            mine = not c.isdigit() or int(c) % self.world == self.rank
            if mine and not npy.with_name(npy.name.replace(".npy", ".keys.json")).exists():
                npy.unlink(missing_ok=True)


def _fault_point(rank: int, parts_written: int) -> None:
    """Fault injection for the kill-and-resume tests: ``EDGECLIP_KILL_AFTER_PARTS=RANK:N`` makes worker RANK kill
    itself (SIGKILL, as the OOM killer or a pre-empted node does) between the two writes of its part N+1."""
    import os

    spec = os.environ.get("EDGECLIP_KILL_AFTER_PARTS")
    if spec:
        r, n = (int(v) for v in spec.split(":"))
        if r == rank and parts_written >= n:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
