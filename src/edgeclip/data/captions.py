"""Caption datasets: COCO caption JSON, Karpathy split JSON, Flickr ``token.txt`` and ``IMAGE, caption`` text/CSV.

Every format loads into one :class:`CaptionSet` (images with their captions, optionally one split).
Bad input is skipped and counted, never silently dropped: ``skipped`` counts ``missing_image`` (captions
whose image file or image id does not exist), ``empty_caption`` (captions without a single word),
``no_captions`` (images, or names in a split list, left without any caption) and ``bad_line``.

    cs = load_captions("../shared/data/vi-captions/captions.txt", split="train")   # splits.json beside it
    cs = load_captions("coco-mini/captions_val2017.json")                         # images/ beside it
    cs = load_captions("dataset_flickr8k.json", images="Flicker8k_Dataset", split="test")
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.sources import ImageRecord, file_key
from edgeclip.data.vocab import tokenize

FORMATS = ("coco", "karpathy", "flickr", "csv")
_FLICKR_LINE = re.compile(r"^([^\t#]+)#(\d+)\t(.*)$")
_HEADER_NAMES = {"image", "image_name", "filename", "file", "file_name", "path", "img"}


@dataclass
class CaptionItem:
    name: str  # how the image is named in the captions file (its id in results)
    path: Path
    captions: list[str]
    split: str | None = None

    def record(self) -> ImageRecord:
        """The image as an :class:`ImageRecord` (same cache key as ``edgeclip cache`` gives this file)."""
        return ImageRecord(file_key(self.path), self.name, None, self.path)


@dataclass
class CaptionSet:
    items: list[CaptionItem]
    fmt: str
    source: str
    images_dir: str
    split: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # a few skip reasons, for the user

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)

    def all_captions(self) -> list[str]:
        return [c for it in self.items for c in it.captions]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "format": self.fmt,
            "split": self.split,
            "images": len(self.items),
            "captions": self.n_captions,
            "skipped": dict(self.skipped),
            "skip_examples": self.examples[:5],
        }


class _Skips:
    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def add(self, kind: str, why: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {why}")


def detect_format(path: Path) -> tuple[str, object]:
    """(format, parsed payload) of a captions file."""
    if not path.is_file():
        raise EdgeClipError(f"captions file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgeClipError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None
        if (
            isinstance(d, dict)
            and isinstance(d.get("annotations"), list)
            and isinstance(d.get("images"), list)
        ):
            return "coco", d
        if (
            isinstance(d, dict)
            and isinstance(d.get("images"), list)
            and (not d["images"] or isinstance(d["images"][0], dict) and "sentences" in d["images"][0])
        ):
            return "karpathy", d
        raise EdgeClipError(
            f"{path}: JSON is neither COCO captions (images + annotations) nor a Karpathy split "
            "file (images with sentences)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EdgeClipError(f"{path} is not UTF-8 text: {e}") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if _FLICKR_LINE.match(first.strip("\r")):
        return "flickr", text
    return "csv", text


def _load_splits(splits: Path | None) -> dict[str, set] | None:
    if splits is None:
        return None
    if not splits.is_file():
        raise EdgeClipError(f"splits file not found: {splits}")
    if splits.suffix.lower() == ".json":
        try:
            d = json.loads(splits.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EdgeClipError(f"{splits} is not valid JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(d, dict) or not all(isinstance(v, list) for v in d.values()):
            raise EdgeClipError(f'{splits}: expected {{"train": [image, ...], "val": [...], ...}}')
        return {k: {str(x).strip() for x in v} for k, v in d.items()}
    names = {ln.strip() for ln in splits.read_text(encoding="utf-8").splitlines() if ln.strip()}
    return {"__list__": names}


def _parse(fmt: str, payload, path: Path, skips: _Skips) -> list[tuple[str, str, str | None, str]]:
    """Rows of (image name, caption, split or None, sub-folder hint)."""
    rows: list[tuple[str, str, str | None, str]] = []
    {"coco": _coco_rows, "karpathy": _karpathy_rows, "flickr": _flickr_rows}.get(fmt, _csv_rows)(
        payload, path, skips, rows
    )
    return rows


def _coco_rows(payload, path: Path, skips: _Skips, rows: list) -> None:
    names = {}
    for im in payload["images"]:
        if "id" in im and "file_name" in im:
            names[im["id"]] = im["file_name"]
    seen = set()
    for a in payload["annotations"]:
        iid = a.get("image_id")
        if iid not in names:
            skips.add(
                "missing_image", f"annotation {a.get('id')} refers to image id {iid} not listed in images"
            )
            continue
        seen.add(iid)
        rows.append((names[iid], str(a.get("caption") or ""), None, ""))
    for iid, n in names.items():
        if iid not in seen:
            skips.add("no_captions", n)


def _karpathy_rows(payload, path: Path, skips: _Skips, rows: list) -> None:
    for im in payload["images"]:
        name = im.get("filename") or im.get("file_name")
        if not name:
            skips.add("bad_line", f"image entry without filename (imgid {im.get('imgid')})")
            continue
        split = im.get("split")
        sents = im.get("sentences") or []
        if not sents:
            skips.add("no_captions", name)
        for s in sents:
            raw = s.get("raw") if isinstance(s, dict) else s
            if raw is None and isinstance(s, dict):
                raw = " ".join(s.get("tokens") or [])
            rows.append((name, str(raw or ""), split, im.get("filepath") or ""))


def _flickr_rows(payload, path: Path, skips: _Skips, rows: list) -> None:
    for i, ln in enumerate(payload.splitlines(), 1):
        if not ln.strip():
            continue
        m = _FLICKR_LINE.match(ln.rstrip("\r"))
        if not m:
            skips.add("bad_line", f"{path.name}:{i}: expected 'image#N<TAB>caption'")
            continue
        rows.append((m.group(1).strip(), m.group(3), None, ""))


def _csv_rows(payload, path: Path, skips: _Skips, rows: list) -> None:
    """IMAGE, caption (the caption may contain commas; quoted CSV is accepted too)."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    for i, ln in enumerate(payload.splitlines(), 1):
        if not ln.strip():
            continue
        if ln.lstrip().startswith('"'):
            parts = next(csv.reader(io.StringIO(ln), delimiter=delim), [])
            parts = [parts[0], delim.join(parts[1:])] if len(parts) >= 2 else []
        else:
            parts = ln.split(delim, 1)
        if len(parts) != 2 or not parts[0].strip():
            skips.add("bad_line", f"{path.name}:{i}: expected 'IMAGE{delim} caption'")
            continue
        name, cap = parts[0].strip(), parts[1]
        if i == 1 and name.lower() in _HEADER_NAMES:
            continue
        rows.append((name, cap, None, ""))


def unpacked(archive: Path) -> Path:
    """A tar archive of images, unpacked once into edgeclip's cache (keyed by its path, size and mtime): the
    archive itself is never written to, so it may sit on a read-only share."""
    from edgeclip.core.io import sha256_text
    from edgeclip.core.places import cache_root
    from edgeclip.data.sources import ensure_extracted

    st = archive.stat()
    dest = (
        cache_root()
        / "archives"
        / f"{archive.stem}-{sha256_text(f'{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}')[:12]}"
    )
    ensure_extracted(archive, dest)
    return dest / "images" if (dest / "images").is_dir() else dest


def _images_dir(fmt: str, path: Path, images: Path | None, rows) -> Path:
    if images is not None:
        if images.is_file() and images.name.endswith(".tar"):
            return unpacked(images)
        if not images.is_dir():
            raise EdgeClipError(f"images folder not found: {images}")
        return images
    base = path.parent
    if not (base / "images").is_dir() and (base / "images.tar").is_file():  # Flickr8k as shared here
        return unpacked(base / "images.tar")
    cands = [base / "images", base]
    if fmt == "coco":
        m = re.search(r"_(\w+?\d{4})\.json$", path.name)  # captions_val2017.json -> val2017
        if m:
            cands += [base / m.group(1), base.parent / m.group(1), base.parent / "images" / m.group(1)]
    if fmt == "flickr":
        cands += [base / d for d in ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "Images")]
    cands = [c for c in cands if c.is_dir()]
    for c in cands:
        for name, _, _, sub in rows[:50]:
            if (c / sub / name).is_file() or (c / name).is_file():
                return c
    raise EdgeClipError(
        f"cannot find the images of {path}: none of the first images exist under "
        f"{', '.join(map(str, cands)) or base}; pass the images folder (--images)"
    )


def _drop_duplicate_images(items: list[CaptionItem], skips: _Skips) -> list[CaptionItem]:
    """Byte-identical photos under two names (Flickr8k has a pair): the first name keeps it, the other is
    skipped and counted, so one photo is not trained on, or scored, twice."""
    import hashlib

    seen: dict[str, str] = {}
    out = []
    for it in items:
        h = hashlib.sha256(it.path.read_bytes()).hexdigest()
        if h in seen:
            skips.add("duplicate_image", f"{it.name} (same bytes as {seen[h]})")
            continue
        seen[h] = it.name
        out.append(it)
    return out


def _one_split(rows: list, split: str, splits, fmt: str, path: Path, skips: _Skips) -> list:
    """The rows of one split: a Karpathy file's own, or those a splits file lists (a ``splits.json`` beside
    the captions file when none is given); listed images without captions are counted."""
    sp_path = Path(splits) if splits else None
    if sp_path is None and fmt != "karpathy" and (path.parent / "splits.json").is_file():
        sp_path = path.parent / "splits.json"
    split_sets = _load_splits(sp_path)
    if fmt == "karpathy" and split_sets is None:
        want = {"train", "restval"} if split == "train" else {split}
        known = {r[2] for r in rows}
        if not known & want:
            raise EdgeClipError(
                f"{path} has no split {split!r} (splits: {', '.join(sorted(map(str, known)))})"
            )
        return [r for r in rows if r[2] in want]
    if split_sets is None:
        raise EdgeClipError(f"{path} has no split information; pass a splits file or leave the split empty")
    names = split_sets.get("__list__") or split_sets.get(split)
    if names is None:
        raise EdgeClipError(f"split {split!r} not in {sp_path} (splits: {', '.join(sorted(split_sets))})")
    in_file = {r[0] for r in rows}
    for n in sorted(names - in_file):
        skips.add("no_captions", f"{n} (listed in split {split!r})")
    return [r for r in rows if r[0] in names]


def _group(rows: list, img_dir: Path, check_images: bool, skips: _Skips) -> dict[str, CaptionItem]:
    """Captions grouped per image; missing images and empty captions skipped and counted."""
    grouped: dict[str, CaptionItem] = {}
    missing = set()
    for name, cap, sp, sub in rows:
        if name in missing:
            skips.add("missing_image", name)
            continue
        it = grouped.get(name)
        if it is None:
            p = img_dir / sub / name if sub and (img_dir / sub / name).is_file() else img_dir / name
            if check_images and not p.is_file():
                missing.add(name)
                skips.add("missing_image", str(p))
                continue
            it = grouped[name] = CaptionItem(name, p, [], sp)
        if not tokenize(cap):
            skips.add("empty_caption", f"{name}: {cap.strip()!r}")
            continue
        it.captions.append(" ".join(cap.split()))  # collapse stray whitespace, keep the text otherwise
    return grouped


def load_captions(
    path: str | Path,
    images: str | Path | None = None,
    split: str | None = None,
    splits: str | Path | None = None,
    fmt: str = "auto",
    check_images: bool = True,
) -> CaptionSet:
    """Load a captions file of any supported format, optionally one split of it.

    ``splits``: a JSON ``{"train": [names], "val": [...], "test": [...]}`` or a text file of image names
    (Flickr ``Flickr_8k.trainImages.txt``); for CSV/Flickr files a ``splits.json`` next to the captions file
    is used when ``split`` is given and ``splits`` is not. Karpathy files carry their own split
    (``restval`` counts as ``train``).
    """
    path = Path(path)
    got_fmt, payload = detect_format(path)
    if fmt != "auto":
        if fmt not in FORMATS:
            raise EdgeClipError(f"unknown caption format {fmt!r} (auto, {', '.join(FORMATS)})")
        if fmt != got_fmt:
            raise EdgeClipError(f"{path} looks like {got_fmt!r}, not {fmt!r}")
    fmt = got_fmt
    skips = _Skips()
    rows = _parse(fmt, payload, path, skips)
    if not rows:
        raise EdgeClipError(f"{path}: no captions found ({fmt} format)")
    if split:
        rows = _one_split(rows, split, splits, fmt, path, skips)
    img_dir = (
        _images_dir(fmt, path, Path(images) if images else None, rows)
        if check_images
        else (Path(images) if images else path.parent)
    )
    grouped = _group(rows, img_dir, check_images, skips)
    items = []
    for it in grouped.values():
        if it.captions:
            items.append(it)
        else:
            skips.add("no_captions", it.name)
    if check_images:
        items = _drop_duplicate_images(items, skips)
    if not items:
        raise EdgeClipError(f"{path}: no usable image with a caption ({dict(skips.counts)})")
    return CaptionSet(items, fmt, str(path), str(img_dir), split, dict(skips.counts), skips.examples)


def held_out_photos(
    captions: str, images: str | None, split: str | None, train: CaptionSet | None = None
) -> set:
    """The resolved paths of a caption set's photos outside ``split`` (its val and test): what extra training data
    must never bring back in. ``train``: the split, when already loaded."""
    if not split:
        return set()
    train = train or load_captions(captions, images, split)
    every = load_captions(captions, images, None).items
    return {it.path.resolve() for it in every} - {it.path.resolve() for it in train.items}


def photo_pool(
    captions: str | None, split: str | None, images: str | None, add: list, seed: int = 0
) -> tuple[list[str], dict, dict]:
    """The photos of one split of a caption set, then of each ``add`` source (a folder, ImageFolder or list, or
    ``{path, max_images}`` for a seeded random subset), in order, each photo once; photos of the caption set's
    other splits are never added (counted as ``held_out``). -> (paths, photos added per source, skipped counts)."""
    import numpy as np

    from edgeclip.data.sources import open_source

    paths: list[str] = []
    counts: dict = {}
    skipped: dict = {}
    held_out: set = set()
    if captions:
        cs = load_captions(captions, images, split)
        paths = [str(it.record().path) for it in cs.items]
        counts["captions"], skipped = len(paths), dict(cs.skipped)
        if add:
            held_out = held_out_photos(captions, images, split, cs)
    seen = {Path(p).resolve() for p in paths}
    for spec in add:
        spec = spec if isinstance(spec, dict) else {"path": spec}
        n_max, where = int(spec.get("max_images", 0)), str(spec["path"])
        src = open_source(where)
        if src.is_stream:
            raise EdgeClipError(
                f"{where} streams (tar shards): a photo pool takes folders, ImageFolders or lists"
            )
        recs = src.records
        if n_max:  # a seeded random n_max of them, kept in their order
            pick = np.random.default_rng(seed).permutation(len(recs))[:n_max]
            recs = [recs[i] for i in sorted(pick)]
        added = 0
        for r in recs:
            rp = Path(r.path).resolve()
            if rp in held_out:
                skipped["held_out"] = skipped.get("held_out", 0) + 1
            elif rp not in seen:
                seen.add(rp)
                paths.append(str(r.path))
                added += 1
        counts[where] = added
    if not paths:
        raise EdgeClipError("no photos in the pool (give captions + split and/or sources to add)")
    return paths, counts, skipped
