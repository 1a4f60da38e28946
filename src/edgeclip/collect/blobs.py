"""The collector's blob store for the JPEGs: a folder by default, any fsspec URL (``s3://``, ``gs://``,
``memory://``...) for object storage. Names are content hashes, so a blob written twice is the same blob."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path


class Blobs:
    def __init__(self, spec: str | os.PathLike):
        s = str(spec)
        self.spec = s
        self.local = "://" not in s or s.startswith("file://")
        if self.local:
            self.root = Path(s.removeprefix("file://"))
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            try:
                import fsspec
            except ImportError:
                raise EdgeClipError("an object-storage blob store needs fsspec: pip install fsspec") from None
            try:
                self.fs, self.base = fsspec.core.url_to_fs(s)
            except (ImportError, ValueError) as e:
                raise EdgeClipError(f"blob store {s!r}: {e}") from None

    @staticmethod
    def name_for(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        return f"{h[:2]}/{h}.jpg"

    def put(self, data: bytes) -> str:
        name = self.name_for(data)
        if self.local:
            p = self.root / name
            if not p.is_file():
                with atomic_path(p) as tmp:
                    tmp.write_bytes(data)
        else:
            path = f"{self.base.rstrip('/')}/{name}"
            if not self.fs.exists(path):
                self.fs.pipe_file(path, data)  # object stores write an object whole or not at all
        return name

    def get(self, name: str) -> bytes:
        if ".." in name or name.startswith("/"):
            raise EdgeClipError(f"not a blob name: {name!r}")
        if self.local:
            return (self.root / name).read_bytes()
        return self.fs.cat_file(f"{self.base.rstrip('/')}/{name}")
