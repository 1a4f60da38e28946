"""Image sources: ImageFolder trees, plain folders, file lists / CSV, and WebDataset tar shards.

Every source yields :class:`ImageRecord` items with a stable ``key`` (path + size + mtime, or
shard + sample key) that the teacher-embedding cache uses to recognise a file.
"""

from __future__ import annotations

import csv
import glob
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.images import (
    IMAGE_EXTS,  # noqa: E402  (re-exported: one list of image suffixes)
    load_image,
)

WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")


def is_image(p: str | os.PathLike) -> bool:
    return Path(p).suffix.lower() in IMAGE_EXTS


def file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class ImageRecord:
    key: str
    name: str  # display name (relative path or sample key)
    label: int | None = None
    path: Path | None = None
    data: bytes | None = None  # in-memory payload (tar shards)
    # reinforced shards (``edgeclip cache --format wds``): the teacher's (views, dim) embeddings of this image
    # and the view parameters that produced them, carried with the image
    targets: bytes | None = None
    views: dict | None = None
    # how a file that is not an RGB photo is shown as one (a multi-band tile's RGB band set): path -> PIL image
    render: Callable | None = None

    def load(self):
        """Decode to an RGB PIL image (raises ImageLoadError with one clear line)."""
        if self.render is not None and self.data is None:
            return self.render(self.path)
        return load_image(self.data if self.data is not None else self.path)


@dataclass
class ImageSource:
    """A finite, ordered list of records (folders, lists) or a stream (tar shards)."""

    kind: str
    root: str
    classes: list[str] | None = None
    records: list[ImageRecord] | None = None
    stream: Callable[[], Iterator[ImageRecord]] | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def is_stream(self) -> bool:
        return self.records is None

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records) if self.records is not None else self.stream()

    def __len__(self) -> int:
        if self.records is None:
            raise TypeError("a streaming source has no length")
        return len(self.records)


def _sorted_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image(p))


def image_folder(root: str | os.PathLike) -> ImageSource:
    """``root/<class>/<image>`` (class = sub-folder name)."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise EdgeClipError(f"{root} has no class sub-folders (expected ROOT/<class>/<image>)")
    recs: list[ImageRecord] = []
    for ci, c in enumerate(classes):
        for p in _sorted_images(root / c):
            recs.append(ImageRecord(file_key(p), str(p.relative_to(root)), ci, p))
    if not recs:
        raise EdgeClipError(f"no images found under {root}")
    return ImageSource("imagefolder", str(root), classes, recs)


def plain_folder(root: str | os.PathLike) -> ImageSource:
    root = Path(root)
    recs = [ImageRecord(file_key(p), str(p.relative_to(root)), None, p) for p in _sorted_images(root)]
    if not recs:
        raise EdgeClipError(f"no images found under {root}")
    return ImageSource("folder", str(root), None, recs)


def file_list(path: str | os.PathLike) -> ImageSource:
    """A .txt (one path per line) or .csv (``path[,label]``, header optional) file.

    Relative paths are resolved against the list's folder. Missing files are skipped and reported.
    """
    path = Path(path)
    base = path.parent
    rows: list[Sequence[str]] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            rows = [r for r in csv.reader(fh, dialect=dialect) if r and r[0].strip()]
        if rows and rows[0][0].strip().lower() in ("path", "image", "file", "filename", "filepath"):
            rows = rows[1:]
    else:
        rows = [
            [ln.strip()]
            for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
    label_names = sorted({r[1].strip() for r in rows if len(r) > 1 and r[1].strip()})
    idx = {c: i for i, c in enumerate(label_names)}
    recs, skipped = [], []
    for r in rows:
        p = Path(r[0].strip())
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            skipped.append(f"{p}: missing")
            continue
        lab = idx.get(r[1].strip()) if len(r) > 1 else None
        recs.append(ImageRecord(file_key(p), r[0].strip(), lab, p))
    if not recs:
        raise EdgeClipError(f"none of the {len(rows)} files listed in {path} exist")
    return ImageSource("list", str(path), label_names or None, recs, skipped=skipped)


def expand_shards(spec: str) -> list[str]:
    try:
        import braceexpand

        pats = list(braceexpand.braceexpand(spec))
    except ImportError:  # pragma: no cover
        pats = [spec]
    out: list[str] = []
    for p in pats:
        out.extend(sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p])
    missing = [p for p in out if not Path(p).is_file()]
    if missing:
        raise EdgeClipError(f"tar shard not found: {missing[0]}")
    return out


def _keeping_global_random(make):
    """Build (``make()``) and iterate an iterable without letting it move Python's global ``random`` state
    (webdataset draws from it when it opens a shard): a training run then draws the same augmentations from
    shards as from files."""
    import random

    state = random.getstate()
    try:
        it = iter(make())
    finally:
        random.setstate(state)
    while True:
        state = random.getstate()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            random.setstate(state)
        yield item


def webdataset(spec: str, classes: list[str] | None = None) -> ImageSource:
    """WebDataset tar shards (``shard-{000..009}.tar`` or a glob), streamed with the webdataset library.

    Samples carry an image under one of jpg/png/webp/... and optionally ``cls`` (int) or ``txt``.
    """
    shards = expand_shards(spec)
    if not shards:
        raise EdgeClipError(f"no tar shards match {spec}")

    def stream() -> Iterator[ImageRecord]:
        for shard in shards:
            try:
                yield from _shard_records(Path(shard))
            except (tarfile.TarError, OSError, ValueError, KeyError) as e:  # a fake or truncated shard
                src.skipped.append(
                    f"{shard}: unreadable tar shard ({type(e).__name__}: {str(e)[:120]}); "
                    "the samples read before the damage are kept"
                )

    def _shard_records(sp: Path) -> Iterator[ImageRecord]:
        import webdataset as wds

        st = sp.stat()
        prefix = f"{sp.resolve()}|{st.st_size}|{st.st_mtime_ns}#"
        for sample in _keeping_global_random(
            lambda: wds.WebDataset(str(sp), shardshuffle=False, empty_check=False)
        ):
            key = sample["__key__"]
            data = next((sample[k] for k in WDS_IMAGE_KEYS if k in sample), None)
            if data is None:
                continue
            label = None
            if "cls" in sample:
                try:
                    label = int(sample["cls"].decode().strip())
                except ValueError:
                    label = None
            rec = ImageRecord(prefix + key, f"{sp.name}/{key}", label, None, data)
            if "emb.npy" in sample and "views.json" in sample:
                import json

                rec.targets, rec.views = sample["emb.npy"], json.loads(sample["views.json"])
            yield rec

    src = ImageSource("wds", spec, classes, None, stream)
    return src


def open_source(spec: str | os.PathLike, kind: str = "auto") -> ImageSource:
    """Open ``spec`` as an image source. ``kind``: auto, imagefolder, folder, list, wds."""
    s = str(spec)
    p = Path(s)
    if kind == "auto":
        if s.endswith(".tar") or "{" in s or (("*" in s) and ".tar" in s):
            kind = "wds"
        elif p.is_file() and p.suffix.lower() in (".txt", ".csv", ".tsv", ".lst"):
            kind = "list"
        elif p.is_file() and is_image(p):
            return ImageSource("files", str(p.parent), None, [ImageRecord(file_key(p), p.name, None, p)])
        elif p.is_dir():
            subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
            top_imgs = [f for f in p.iterdir() if f.is_file() and is_image(f)]
            kind = "imagefolder" if subdirs and not top_imgs else "folder"
        elif not p.exists():
            raise EdgeClipError(f"path not found: {p}")
        else:
            raise EdgeClipError(f"cannot tell what kind of image source {p} is (use --kind)")
    if kind == "imagefolder":
        return image_folder(p)
    if kind == "folder":
        return plain_folder(p)
    if kind == "list":
        return file_list(p)
    if kind == "wds":
        return webdataset(s)
    raise EdgeClipError(f"unknown source kind {kind!r} (auto, imagefolder, folder, list, wds)")


def labelled_source(spec: str | os.PathLike, purpose: str, max_images: int = 0, seed: int = 0):
    """-> (ImageFolder source, its records, or a seeded random ``max_images`` of them); one clear error otherwise."""
    src = open_source(spec)
    if not src.classes:
        raise EdgeClipError(
            f"{spec}: {purpose} needs an ImageFolder (ROOT/<class>/<image>) to know the true labels"
        )
    recs = src.records
    if max_images:
        import torch

        g = torch.Generator().manual_seed(seed)
        recs = [recs[i] for i in torch.randperm(len(recs), generator=g)[:max_images].tolist()]
    return src, recs


def without_classes(records: list, names: list[str], exclude: list[str]) -> tuple[list, list[str]]:
    """``records`` without the images of the ``exclude`` classes (by folder or prompt name), labels renumbered
    over the classes kept -> (records, kept class names)."""
    if not exclude:
        return records, list(names)
    from dataclasses import replace

    bad = [e for e in exclude if e not in names]
    if bad:
        raise EdgeClipError(f"exclude_classes: unknown class {bad[0]!r} (have: {', '.join(names)})")
    keep = [i for i, n in enumerate(names) if n not in exclude]
    if not keep:
        raise EdgeClipError("exclude_classes leaves no class to train on")
    new = {old: j for j, old in enumerate(keep)}
    recs = [replace(r, label=new[r.label]) for r in records if r.label in new]
    return recs, [names[i] for i in keep]


def rendered(records: list, render) -> list:
    """``records`` shown as RGB through a ModalitySpec or its settings (``{bands: rgb, scale: 3000}`` for a
    Sentinel-2 tile); unchanged when ``render`` is None or names no bands. The rendering joins each record's cache
    key (another rendering of a file is another cache entry)."""
    from dataclasses import replace
    from functools import partial

    from edgeclip.core.modality import ModalitySpec, render_rgb, rendering_key

    if not render:
        return records
    spec = render if isinstance(render, ModalitySpec) else ModalitySpec.from_dict({"name": "rgb", **render})
    if spec.bands is None:
        return records
    tag, show = "#" + rendering_key(spec), partial(render_rgb, spec=spec)
    return [replace(r, key=r.key + tag, render=show) for r in records]


def files_source(paths: Sequence[str | os.PathLike]) -> ImageSource:
    """Several CLI arguments (files and/or folders) as one source; missing paths are reported."""
    recs, skipped = [], []
    for a in paths:
        p = Path(a)
        if p.is_dir():
            recs.extend(plain_folder(p).records)
        elif p.is_file():
            recs.append(ImageRecord(file_key(p), str(p), None, p))
        else:
            skipped.append(f"{p}: not found")
    if not recs:
        raise EdgeClipError("no images found in: " + ", ".join(map(str, paths)))
    return ImageSource("files", ".", None, recs, skipped=skipped)


def ensure_extracted(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``tar_path`` into ``dest`` once (marker file makes it idempotent and kill-safe)."""
    tar_path, dest = Path(tar_path), Path(dest)
    marker = dest / f".extracted-{tar_path.name}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path) as tf:
            tf.extractall(dest, filter="data")  # members that climb out, links outside, devices: refused
    except tarfile.FilterError as e:
        raise EdgeClipError(
            f"{tar_path}: refused to unpack member {getattr(e, 'tarinfo', None) and e.tarinfo.name!r} "
            f"({type(e).__name__}: it would land outside {dest} or is not a plain file)"
        ) from None
    except (tarfile.TarError, EOFError) as e:
        raise EdgeClipError(
            f"{tar_path} is not a readable tar archive: {' '.join(str(e).split())[:200]}"
        ) from None
    marker.write_text("ok\n")
    return dest


def chunks(records: Iterable[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    """``records`` in lists of ``size`` (the last one shorter), in order: the fixed chunks a cache or shard writer
    computes and writes as one unit."""
    buf: list[ImageRecord] = []
    for r in records:
        buf.append(r)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
