"""An on-disk key -> (part, row) index that opens in milliseconds at millions of keys: an open-addressing hash
table (linear probing, load factor <= 0.5) of 64-bit key hashes, stored as two ``.npy`` arrays that are
memory-mapped, not read, when a cache opens. A lookup hashes the key (BLAKE2b, 8 bytes) and probes a slot or two:
O(1), whatever the size. Two keys whose 64-bit hashes collide are refused when the index is built (at a million
keys the chance is about 3e-8), so a lookup never returns another key's row.

Files, beside each other: ``NAME.hash.npy`` (uint64, one per slot, 0 = empty), ``NAME.pos.npy`` (int64,
``part << 32 | row``), ``NAME.json`` (format, number of keys, slots, and the parts it covers in order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, read_json, write_json

INDEX_FORMAT = "edgeclip-keyindex/1"


def key_hash(key: str) -> int:
    """The key's 64-bit BLAKE2b hash; never 0 (0 marks an empty slot)."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return h or 1


def _hashes(keys: Sequence[str]) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))


def build_table(hashes: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot hashes, slot positions) of an open-addressing table holding ``hashes`` -> ``pos``; vectorised linear
    probing: each round, the items whose slot is free take it (one per slot), the rest move one slot on."""
    n = len(hashes)
    if len(np.unique(hashes)) != n:
        raise EdgeClipError(
            "two cache keys share a 64-bit hash (or a key is listed twice); rebuild the cache"
        )
    size = 1 << max(4, int(np.ceil(np.log2(max(1, 2 * n)))))
    mask = np.uint64(size - 1)
    th = np.zeros(size, np.uint64)
    tp = np.full(size, -1, np.int64)
    todo = np.arange(n)
    slot = (hashes & mask).astype(np.int64)
    while len(todo):
        s = slot[todo]
        free = th[s] == 0
        cand, cs = todo[free], s[free]
        _, first = np.unique(cs, return_index=True)  # one item per free slot this round
        won = cand[first]
        th[slot[won]] = hashes[won]
        tp[slot[won]] = pos[won]
        placed = np.zeros(n, bool)
        placed[won] = True
        todo = todo[~placed[todo]]
        slot[todo] = (slot[todo] + 1) & (size - 1)
    return th, tp


def write_index(path: Path, parts: Sequence[tuple[str, Sequence[str]]], extra: dict | None = None) -> dict:
    """Index ``parts`` [(part name, its keys in row order)] at ``path`` (NAME.json + NAME.hash.npy + NAME.pos.npy,
    each written atomically; the JSON last, so a half-written index is never read as whole). ``extra``: more
    fields for the JSON (what the index's owner checks it against)."""
    hashes, pos = [], []
    for p, (_, keys) in enumerate(parts):
        hashes.append(_hashes(keys))
        pos.append((np.int64(p) << 32) | np.arange(len(keys), dtype=np.int64))
    h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    ps = np.concatenate(pos) if pos else np.zeros(0, np.int64)
    th, tp = build_table(h, ps)
    for suffix, arr in ((".hash.npy", th), (".pos.npy", tp)):
        with atomic_path(path.with_name(path.name + suffix)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
    meta = {
        **(extra or {}),
        "format": INDEX_FORMAT,
        "n": int(len(h)),
        "slots": int(len(th)),
        "parts": [n for n, _ in parts],
    }
    write_json(path.with_name(path.name + ".json"), meta)
    return meta


class KeyIndex:
    """The read side: ``index.get(key)`` -> (part number, row) or None; ``index.lookup(keys)`` vectorised."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = read_json(self.path.with_name(self.path.name + ".json"))
        if self.meta.get("format") != INDEX_FORMAT:
            raise EdgeClipError(f"{self.path}: unsupported key index format {self.meta.get('format')!r}")
        try:
            self.hash = np.load(self.path.with_name(self.path.name + ".hash.npy"), mmap_mode="r")
            self.pos = np.load(self.path.with_name(self.path.name + ".pos.npy"), mmap_mode="r")
        except (OSError, ValueError) as e:
            raise EdgeClipError(
                f"key index {self.path} is damaged ({str(e).splitlines()[0][:100]})"
            ) from None
        if len(self.hash) != self.meta["slots"] or len(self.pos) != self.meta["slots"]:
            raise EdgeClipError(f"key index {self.path} is damaged (slot arrays do not match its JSON)")
        self.mask = len(self.hash) - 1
        self.parts: list[str] = list(self.meta["parts"])

    def __len__(self) -> int:
        return int(self.meta["n"])

    def get(self, key: str) -> tuple[int, int] | None:
        h = key_hash(key)
        i = h & self.mask
        while True:
            s = int(self.hash[i])
            if s == 0:
                return None
            if s == h:
                p = int(self.pos[i])
                return p >> 32, p & 0xFFFFFFFF
            i = (i + 1) & self.mask

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """(N,) int64 positions (``part << 32 | row``; -1 for a key not held), probing all keys at once."""
        h = _hashes(keys)
        out = np.full(len(h), -1, np.int64)
        slot = (h & np.uint64(self.mask)).astype(np.int64)
        todo = np.arange(len(h))
        while len(todo):
            s = self.hash[slot[todo]]
            hit, empty = s == h[todo], s == 0
            out[todo[hit]] = self.pos[slot[todo[hit]]]
            todo = todo[~(hit | empty)]
            slot[todo] = (slot[todo] + 1) & self.mask
        return out
