"""Paired-modality data: RGB + depth / IR / SWIR / multi-band images matched by file stem.

Layouts understood by :func:`open_pairs`:

* ``ROOT/<modality>/<...>/<stem>.<ext>`` (e.g. ``rgb/`` + ``depth/``, any names), matched by the
  path below the modality folder without its extension. When every file sits in a sub-folder,
  that first folder is the class (``rgb/cat/1.jpg`` + ``depth/cat/1.png``).
* a flat folder of ``<stem>_<modality>.<ext>`` files (``NYU_color.ppm`` + ``NYU_depth.pgm``).
* any image source (ImageFolder, folder) plus *derived* modalities computed from the RGB image,
  e.g. ``derive={"mono": "luminance"}`` (what a monochrome IR/NIR camera would see).

Each modality is turned into a float tensor in [0, 1] by its :class:`ModalitySpec` (16-bit depth in
millimetres divided by a range or min-max scaled over valid pixels, 8-bit / 16-bit single channel,
multi-band TIFF), then given the channels the student needs by an *input adapter*: ``repeat`` (1 -> 3),
``colormap`` (1 -> 3 through a matplotlib colour map) or ``conv`` (a learned 1x1 conv in the model).

Bad input never disappears silently: a stem present in one modality only, a map of another size than
its RGB image, an all-zero map, or an unreadable file is skipped and listed in ``skipped`` (or raises
:class:`PairError` with ``strict=True``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.images import load_image
from edgeclip.core.modality import (  # noqa: F401  (ModalitySpec, read_array: re-exported, their old home)
    ADAPTERS,
    DERIVATIONS,
    ModalityError,
    ModalitySpec,
    read_array,
    read_modality,
    scale_array,
)
from edgeclip.data.sources import is_image, open_source

PRIMARY_NAMES = ("rgb", "color", "colour", "image", "visible", "vis")

# a pair that cannot be used (unpaired stem, size mismatch, band count, all-zero map, unreadable file)
PairError = ModalityError


@dataclass
class PairRecord:
    key: str  # stem (relative path without extension)
    files: dict[str, Path]  # modality -> file (derived modalities have none)
    label: int | None = None


@dataclass
class PairSet:
    root: str
    primary: str
    modalities: list[str]  # primary first
    records: list[PairRecord]
    classes: list[str] | None = None
    derived: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. folders that are not modalities of this set

    def __len__(self) -> int:
        return len(self.records)

    @property
    def others(self) -> list[str]:
        return [m for m in self.modalities if m != self.primary]

    def subset(self, idx: Sequence[int]) -> PairSet:
        return PairSet(
            self.root,
            self.primary,
            list(self.modalities),
            [self.records[i] for i in idx],
            self.classes,
            dict(self.derived),
            list(self.skipped),
            list(self.notes),
        )


def _files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and is_image(p) and not p.name.startswith("."))


def _pick_primary(mods: Sequence[str], primary: str | None) -> str:
    if primary:
        if primary not in mods:
            raise EdgeClipError(f"primary modality {primary!r} not found (have: {', '.join(mods)})")
        return primary
    for p in PRIMARY_NAMES:
        if p in mods:
            return p
    raise EdgeClipError(f"cannot tell which modality is RGB among {', '.join(mods)}: pass primary=/--primary")


def _match(per_mod: dict[str, dict[str, Path]], primary: str, root: str, derived: dict[str, str]) -> PairSet:
    mods = [primary] + sorted(m for m in per_mod if m != primary)
    all_keys = sorted(set().union(*[set(v) for v in per_mod.values()]))
    records, skipped = [], []
    for k in all_keys:
        have = [m for m in mods if k in per_mod[m]]
        if len(have) != len(mods):
            missing = [m for m in mods if m not in have]
            skipped.append(f"{k}: unpaired (only in {', '.join(have)}; missing in {', '.join(missing)})")
            continue
        records.append(PairRecord(k, {m: per_mod[m][k] for m in mods}))
    classes = None
    # the first folder under each modality folder is the class, unless those folders are train/val/test
    cls_level = 1 if records and all(r.key.split("/", 1)[0] in SPLIT_NAMES for r in records) else 0
    if records and all(r.key.count("/") > cls_level for r in records):
        classes = sorted({r.key.split("/")[cls_level] for r in records})
        idx = {c: i for i, c in enumerate(classes)}
        for r in records:
            r.label = idx[r.key.split("/")[cls_level]]
    if not records:
        raise EdgeClipError(
            f"{root}: no complete pairs of {', '.join(mods)} "
            f"({len(skipped)} unpaired stems, e.g. {skipped[0] if skipped else '-'})"
        )
    return PairSet(root, primary, mods + list(derived), records, classes, dict(derived), skipped)


def _folder_layout(root_p: Path, mods: list[str], modalities, primary, derive) -> PairSet:
    """ROOT/<modality>/<stem>.<ext>: files of the same stem in each modality folder are a pair."""
    per_mod = {}
    for m in mods:
        files = _files_under(root_p / m)
        if not files:
            raise EdgeClipError(f"{root_p / m}: no images in modality folder {m!r}")
        per_mod[m] = {}
        for f in files:
            k = f.relative_to(root_p / m).with_suffix("").as_posix()
            if k in per_mod[m]:
                raise EdgeClipError(
                    f"{root_p / m}: two files share the stem {k!r} ({per_mod[m][k].name}, {f.name})"
                )
            per_mod[m][k] = f
    prim = _pick_primary(mods, primary)
    ignored = []
    if not modalities:  # auto: folders sharing no stem with the RGB folder are not modalities of it
        ignored = [m for m in mods if m != prim and not set(per_mod[m]) & set(per_mod[prim])]
        for m in ignored:
            del per_mod[m]
        if len(per_mod) < 2:
            raise EdgeClipError(
                f"{root_p}: no folder shares file stems with {prim}/ (pass the modality names)"
            )
    ps = _match(per_mod, prim, str(root_p), derive)
    ps.notes = [f"folder {m}/: no file stem in common with {prim}/, not used as a modality" for m in ignored]
    return ps


def _flat_layout(root_p: Path, mods, primary, derive) -> PairSet:
    """<stem>_<modality>.<ext> files side by side in ROOT."""
    files = [f for f in sorted(root_p.iterdir()) if f.is_file() and is_image(f) and "_" in f.stem]
    if not files:
        raise EdgeClipError(
            f"{root_p}: no modality folders (ROOT/rgb, ROOT/depth, ...) and no <stem>_<modality> files"
        )
    per_mod: dict[str, dict[str, Path]] = {}
    for f in files:
        stem, mod = f.stem.rsplit("_", 1)
        if mods and mod not in mods:
            continue
        per_mod.setdefault(mod, {})[stem] = f
    if len(per_mod) < 2:
        raise EdgeClipError(
            f"{root_p}: found only the modality {', '.join(per_mod) or '(none)'}; a pair needs two"
        )
    return _match(per_mod, _pick_primary(list(per_mod), primary), str(root_p), derive)


SPLIT_NAMES = ("train", "val", "test")


def open_pairs(
    root: str | os.PathLike,
    modalities: Sequence[str] | None = None,
    primary: str | None = None,
    derive: dict[str, str] | None = None,
    split: str | None = None,
) -> PairSet:
    """Open a paired-modality dataset (see the module docstring for the layouts); ``split``: only the pairs of
    that split, named by ``ROOT/splits.json`` (``{"train": [file names or stems], ...}``) or, without it, by a
    ``train/``, ``val/`` or ``test/`` folder right under each modality folder."""
    ps = _open_pairs(root, modalities, primary, derive)
    return _with_split(ps, Path(root), split) if split else ps


def _with_split(ps: PairSet, root: Path, split: str) -> PairSet:
    sj = root / "splits.json" if root.is_dir() else root.parent / "splits.json"
    if sj.is_file():
        from edgeclip.core.io import read_json

        try:
            splits = read_json(sj)
            names = {str(n) for n in splits[split]}
        except KeyError:
            raise EdgeClipError(f"{sj} has no split {split!r} (has: {', '.join(map(str, splits))})") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise EdgeClipError(f"{sj} is not a {{split: [names]}} JSON file ({type(e).__name__})") from None

        def named(r: PairRecord) -> bool:
            return r.key in names or Path(r.files.get(ps.primary, r.key)).name in names
    elif ps.records and all(r.key.split("/", 1)[0] in SPLIT_NAMES for r in ps.records):

        def named(r: PairRecord) -> bool:
            return r.key.split("/", 1)[0] == split
    else:
        raise EdgeClipError(
            f"{root}: no splits.json and no train/val/test folders, so there is no split {split!r}"
        )
    keep = [i for i, r in enumerate(ps.records) if named(r)]
    if not keep:
        raise EdgeClipError(f"{root}: no pair is in split {split!r}")
    out = ps.subset(keep)
    out.notes.append(f"split {split}: {len(keep)} of {len(ps.records)} pairs")
    return out


def _open_pairs(root, modalities, primary, derive) -> PairSet:
    root_p = Path(root)
    if not root_p.exists():
        raise EdgeClipError(f"path not found: {root_p}")
    derive = dict(derive or {})
    for name, how in derive.items():
        if how not in DERIVATIONS:
            raise EdgeClipError(f"unknown derivation {how!r} for modality {name} ({', '.join(DERIVATIONS)})")
    if derive and not modalities:
        # a plain image source; every other modality is computed from its RGB images
        src = open_source(root_p)
        prim = primary or "rgb"
        recs = [
            PairRecord(Path(r.name).with_suffix("").as_posix(), {prim: r.path}, r.label) for r in src.records
        ]
        return PairSet(str(root_p), prim, [prim] + list(derive), recs, src.classes, derive, list(src.skipped))
    if not root_p.is_dir():
        raise EdgeClipError(
            f"{root_p}: a paired dataset is a folder (ROOT/<modality>/... or <stem>_<modality> files)"
        )
    subdirs = sorted(d.name for d in root_p.iterdir() if d.is_dir() and not d.name.startswith("."))
    mods = list(modalities) if modalities else None
    if mods and all((root_p / m).is_dir() for m in mods) or (not mods and len(subdirs) >= 2):
        return _folder_layout(root_p, mods or subdirs, modalities, primary, derive)
    return _flat_layout(root_p, mods, primary, derive)


# --------------------------------------------------------------------------------------- decoding
def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a (C=3, H, W) [0,1] array -> (1, H, W): a monochrome (IR/NIR-like) camera."""
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)
    return (rgb * w).sum(0, keepdims=True)


def _resize_center(x: torch.Tensor, size: int, masked: bool = False) -> torch.Tensor:
    """(C,H,W) float -> (C,size,size): resize the shorter side, centre crop (as the teacher preprocessing).

    ``masked``: zeros are missing readings (depth): average only valid pixels, so that holes do not
    drag their neighbours towards 0 (normalised convolution)."""
    C, H, W = x.shape
    s = size / min(H, W)
    nh, nw = max(size, round(H * s)), max(size, round(W * s))
    if (nh, nw) != (H, W):

        def rs(t):
            return F.interpolate(
                t[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
            )[0]

        if masked and bool((x == 0).any()):
            valid = (x != 0).float()
            w = rs(valid)
            x = torch.where(w > 1e-3, rs(x * valid) / w.clamp_min(1e-3), torch.zeros_like(w))
        else:
            x = rs(x)
    t, lb = (nh - size) // 2, (nw - size) // 2
    return x[:, t : t + size, lb : lb + size].clamp(0, 1)


_LUTS: dict[str, torch.Tensor] = {}


def apply_adapter(x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    """Data-side adapters on (..., C, H, W) in [0,1]: repeat / colormap make 3 channels; conv/none keep C."""
    if spec.adapter == "repeat":
        if x.shape[-3] == 3:
            return x
        if x.shape[-3] != 1:
            raise PairError(
                f"{spec.name}: adapter 'repeat' needs 1 channel, got {x.shape[-3]} (use adapter 'conv')"
            )
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if spec.adapter == "colormap":
        if x.shape[-3] != 1:
            raise PairError(
                f"{spec.name}: adapter 'colormap' needs 1 channel, got {x.shape[-3]} (use adapter 'conv')"
            )
        if spec.colormap not in _LUTS:
            import matplotlib

            _LUTS[spec.colormap] = torch.tensor(
                matplotlib.colormaps[spec.colormap](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32
            )
        lut = _LUTS[spec.colormap]
        idx = (x.float().clamp(0, 1) * 255).round().long().squeeze(-3)  # (..., H, W)
        return lut[idx].movedim(-1, -3).to(x.dtype)
    if spec.adapter == "none" and x.shape[-3] != 3:
        raise PairError(f"{spec.name}: adapter 'none' needs 3 channels, got {x.shape[-3]}")
    return x


def load_pair(
    rec: PairRecord, specs: dict[str, ModalitySpec], primary: str, size: int | None = None
) -> dict[str, torch.Tensor]:
    """Decode one pair: modality -> (C, H, W) float tensor in [0,1] after the data-side adapter.

    ``size`` resizes (shorter side) and centre-crops every modality alike; the maps must have the RGB
    image's size unless their spec allows resizing. Raises :class:`PairError` / ImageLoadError.
    """
    pspec, pfile = specs.get(primary), rec.files[primary]
    try:
        if pspec is not None and pspec.bands is not None:  # RGB as a band set of a multi-band file
            parr = read_array(pfile)
            rgb = read_modality(pfile, pspec, parr)
        else:
            parr = None
            rgb = np.asarray(load_image(pfile), dtype=np.float32).transpose(2, 0, 1) / 255.0
    except ImageLoadError as e:
        raise PairError(f"{rec.key}: {e}") from None
    H, W = rgb.shape[1:]
    out = {primary: torch.from_numpy(np.ascontiguousarray(rgb))}
    for m, spec in specs.items():
        if m == primary:
            continue
        if spec.derive == "luminance":
            a = luminance(rgb)
        elif spec.derive == "bands":  # other bands of the primary's own file
            try:
                a = read_modality(pfile, spec, parr if parr is not None else read_array(pfile))
            except ImageLoadError as e:
                raise PairError(f"{rec.key}: {e}") from None
        else:
            f = rec.files.get(m)
            if f is None:
                raise PairError(f"{rec.key}: no {m} file")
            try:
                a = read_modality(f, spec)
            except ImageLoadError as e:
                raise PairError(f"{rec.key}: {e}") from None
            if a.shape[1:] != (H, W) and not spec.allow_resize:
                raise PairError(
                    f"{rec.key}: {m} map is {a.shape[2]}x{a.shape[1]} but its {primary} image is "
                    f"{W}x{H} (set allow_resize to resize it)"
                )
            if a.shape[1:] != (H, W):
                a = F.interpolate(
                    torch.from_numpy(a)[None], size=(H, W), mode="bilinear", align_corners=False
                )[0].numpy()
        out[m] = torch.from_numpy(np.ascontiguousarray(a))
    res = {}
    for m, x in out.items():
        if size:
            x = _resize_center(
                x, size, masked=m != primary and specs.get(m) is not None and specs[m].derive is None
            )
        res[m] = apply_adapter(x, specs[m]) if m in specs else x
    return res


@dataclass
class PairTensors:
    """A paired dataset in memory: modality -> (N, C, S, S) float16 in [0,1]; labels (N,) or None."""

    x: dict[str, torch.Tensor]
    keys: list[str]
    records: list[PairRecord]
    labels: torch.Tensor | None
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def default_specs(ps: PairSet, overrides: dict[str, dict] | None = None) -> dict[str, ModalitySpec]:
    """A spec for every modality of ``ps`` (primary: plain RGB), updated by ``overrides``."""
    overrides = overrides or {}
    unknown = [m for m in overrides if m not in ps.modalities]
    if unknown:
        raise EdgeClipError(
            f"settings for unknown modality {unknown[0]!r} (have: {', '.join(ps.modalities)})"
        )
    specs = {}
    for m in ps.modalities:
        d = {"name": m, "adapter": "none" if m == ps.primary else "repeat"}
        if m in ps.derived:
            d["derive"] = ps.derived[m]
        d.update(overrides.get(m, {}))
        d["name"] = m
        specs[m] = ModalitySpec.from_dict(d)
    return specs


def preload_pairs(
    ps: PairSet, specs: dict[str, ModalitySpec], size: int, strict: bool = False, progress: bool = False
) -> PairTensors:
    """Decode every pair at ``size`` px into memory; bad pairs are skipped and listed (or raise when strict)."""
    bufs: dict[str, list[torch.Tensor]] = {m: [] for m in ps.modalities}
    keys, recs, labels, skipped = [], [], [], list(ps.skipped)
    if strict and ps.skipped:
        raise PairError(ps.skipped[0])
    it = ps.records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"loading {len(ps.records)} pairs", mininterval=2.0, leave=False)
    for r in it:
        try:
            d = load_pair(r, specs, ps.primary, size)
        except PairError as e:
            if strict:
                raise
            skipped.append(str(e))
            continue
        for m in ps.modalities:
            bufs[m].append(d[m].to(torch.float16))
        keys.append(r.key)
        recs.append(r)
        labels.append(r.label)
    if not keys:
        raise EdgeClipError(
            f"{ps.root}: none of the {len(ps.records)} pairs could be used "
            f"(e.g. {skipped[0] if skipped else '-'})"
        )
    x = {m: torch.stack(v) for m, v in bufs.items()}
    lab = torch.tensor(labels) if all(lb is not None for lb in labels) else None
    return PairTensors(x, keys, recs, lab, skipped)


def fill_stats(
    specs: dict[str, ModalitySpec], data: PairTensors, primary: str, primary_mean, primary_std
) -> None:
    """Per-modality normalisation: the teacher's for RGB, measured on ``data`` for the others (unless set)."""
    for m, s in specs.items():
        if s.mean is not None and s.std is not None:
            continue
        if m == primary:
            s.mean, s.std = list(primary_mean), list(primary_std)
            continue
        x = data.x[m].float()
        s.mean = x.mean(dim=(0, 2, 3)).tolist()
        s.std = [max(v, 1e-3) for v in x.std(dim=(0, 2, 3)).tolist()]


def normalize_modality(x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    m = torch.tensor(spec.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() - m) / s


def summarize(ps: PairSet, data: PairTensors | None = None) -> dict:
    d = {
        "root": ps.root,
        "primary": ps.primary,
        "modalities": ps.modalities,
        "pairs": len(ps.records),
        "classes": ps.classes,
        "derived": ps.derived,
    }
    sk = data.skipped if data is not None else ps.skipped
    d["notes"] = ps.notes
    d["skipped"] = len(sk)
    d["skipped_reasons"] = sk[:50]
    if data is not None:
        d["loaded"] = len(data)
        d["shapes"] = {m: list(v.shape[1:]) for m, v in data.x.items()}
    return d
