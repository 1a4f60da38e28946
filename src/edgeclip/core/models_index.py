"""Model indexes: folders of shipped models with an ``index.json`` (role -> spec, id, files), and finding a
teacher in them by its id.

An artefact (student, bundle, captioner) records its teacher's id and spec. The spec is often a training
folder's path that a copy of the artefact no longer has beside it, so :func:`find_in_indexes` looks the id up,
in this order, in:

1. the folders named by ``$EDGECLIP_MODELS`` (``os.pathsep``-separated);
2. the folder the artefact itself lies in (a shipped student sits beside its ``index.json``);
3. ``./models`` of the working directory;
4. the ``models/`` folder of the source checkout edgeclip runs from.

Specs in an index may be relative to the index's folder or to the folder above it (the repository root); they
are returned as absolute paths, so they load from any working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INDEX = "index.json"
ENV = "EDGECLIP_MODELS"


def repo_models_dir() -> Path | None:
    """``models/`` of the source checkout this package runs from (an editable install), if there is one."""
    from edgeclip.core.places import checkout_dir

    root = checkout_dir()
    return root / "models" if root is not None and (root / "models" / INDEX).is_file() else None


def index_dirs(near: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for an ``index.json``, in order, without repeats."""
    dirs = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    if near is not None:
        n = Path(near)
        dirs.append(n if n.is_dir() else n.parent)
    dirs.append(Path.cwd() / "models")
    repo = repo_models_dir()
    if repo is not None:
        dirs.append(repo)
    out, seen = [], set()
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def read_index(folder: Path) -> dict[str, Any] | None:
    """A folder's ``index.json`` parsed, or None where it is missing or not an edgeclip models index."""
    p = Path(folder) / INDEX
    try:
        idx = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return idx if isinstance(idx, dict) and isinstance(idx.get("models"), dict) else None


def split_spec(spec: str) -> tuple[str, str]:
    """``"reference-lit:/a/b.pt"`` -> ``("reference-lit:", "/a/b.pt")``; a bare path -> ``("", path)``. Only a
    prefix of letters, digits and ``-_.`` counts, so a Windows drive or a URL-ish path is not split."""
    head, sep, rest = spec.partition(":")
    if sep and head and all(c.isalnum() or c in "-_." for c in head) and not head.endswith((".pt", ".json")):
        return head + ":", rest
    return "", spec


def local_path(spec: str) -> Path | None:
    """The local file or folder a spec names, if it names one (an open_clip tag such as ``ViT-B-32:openai``
    names none)."""
    prefix, rest = split_spec(spec)
    looks_local = (
        rest.startswith(("/", "./", "../", "~"))
        or os.sep in rest
        or rest.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )
    if prefix == "hf-hub:" or not looks_local:
        return None
    return Path(rest).expanduser()


def _absolute(spec: str, folder: Path, files: dict) -> str | None:
    prefix, rest = split_spec(spec)
    p = Path(rest)
    cands = [p] if p.is_absolute() else [folder / p, folder.parent / p, folder / p.name]
    cands += [folder / f for f in files or {}]  # the entry's own files, listed relative to the index
    for c in cands:
        if c.exists():
            return prefix + str(c.resolve())
    return None


def find_in_indexes(teacher_id: str, near: str | os.PathLike | None = None) -> str | None:
    """The spec (with an absolute path) of the model whose ``id`` is ``teacher_id`` in the first index that lists
    it with its files present; None when no index does."""
    for d in index_dirs(near):
        idx = read_index(d)
        if idx is None:
            continue
        for entry in idx["models"].values():
            if isinstance(entry, dict) and entry.get("id") == teacher_id and entry.get("spec"):
                spec = _absolute(str(entry["spec"]), d, entry.get("files") or {})
                if spec:
                    return spec
    return None
