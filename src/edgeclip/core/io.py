"""Atomic file writes, JSON and hashing: a killed run never leaves a half-written file. No torch here."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` atomically."""
    path = Path(path)
    if path.is_dir():
        from edgeclip.core.errors import EdgeClipError

        raise EdgeClipError(f"{path} is a folder: it cannot be written as a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON artefact; a corrupt or unreadable one is one CorruptFileError line (missing: OSError)."""
    from edgeclip.core.errors import CorruptFileError

    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{p} is corrupt (not valid JSON: {str(e).splitlines()[0][:120]})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextmanager
def exclusive_lock(
    folder: str | os.PathLike, what: str, name: str = ".lock", wait: bool = False
) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``folder/NAME``, released when the process ends, however it
    ends): a second writer gets one line instead of silently interleaving its writes with the first's
    (``wait=True``: it waits its turn instead)."""
    import fcntl

    from edgeclip.core.errors import EdgeClipError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / name, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise EdgeClipError(
            f"{what} {folder} is being written by {holder}: wait for it, or use another folder"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
