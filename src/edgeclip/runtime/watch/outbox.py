"""The device's store-and-forward outbox: every kept event (its JPEG and a JSON record) waits on disk until the
collector has acknowledged it, through lost links, days offline, reboots and SIGKILL.

Layout of ``OUTBOX/``::

    events/SEQ-KEY.jpg     the frame, written first (atomically)
    events/SEQ-KEY.json    the record, written second (atomically): an event exists once its record does
    rejected/              events the collector refused for good (bad record, too large): kept for a person
    state.json             next sequence number and counters (evicted, sent, rejected), written atomically
    campaign.json          the last campaign the device switched to (rules + version + ETag)

Exactly once, as the collector sees it: ``KEY`` is the event's idempotency key, made by the watcher from the run,
rule, event and frame time, so a frame re-kept after a resume has the same key; the collector stores a key once
and answers a repeat as a duplicate. A crash between the two writes leaves a JPEG without a record, which the
next start removes. The outbox is bounded in bytes: past ``max_bytes`` the oldest events are evicted (counted in
``state.json``). One process owns an outbox at a time (a lock file). No torch here.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, exclusive_lock, write_json

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DEFAULT_MAX_BYTES = 500_000_000
COUNTERS = ("put", "sent", "duplicates", "rejected", "evicted", "evicted_bytes", "replaced")


@dataclass(frozen=True)
class Entry:
    """One pending event: its sequence number, key, record and JPEG paths."""

    seq: int
    key: str
    record: Path
    jpeg: Path

    def read(self) -> tuple[dict[str, Any], bytes]:
        return json.loads(self.record.read_text(encoding="utf-8")), self.jpeg.read_bytes()

    @property
    def nbytes(self) -> int:
        try:
            return self.record.stat().st_size + self.jpeg.stat().st_size
        except FileNotFoundError:
            return 0


class Outbox:
    """A bounded on-disk queue of events, oldest first. Thread-safe within the owning process."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise EdgeClipError(f"the outbox needs max_bytes >= 1, got {max_bytes}")
        self.root = Path(folder)
        self.dir = self.root / "events"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._held = exclusive_lock(self.root, "the outbox")
        self._held.__enter__()  # released when the process ends, however it ends
        st = self._read_state()
        self.stats = {k: int(st.get(k, 0)) for k in COUNTERS}
        self._entries: dict[str, Entry] = {}
        self._recover(int(st.get("next_seq", 0)))

    # ---- start: what a crash left behind
    def _recover(self, next_seq: int) -> None:
        records = {p.stem: p for p in self.dir.glob("*.json")}
        for p in self.dir.iterdir():
            if p.name.startswith("."):  # an atomic write that never finished
                p.unlink(missing_ok=True)
            elif p.suffix == ".jpg" and p.stem not in records:  # killed between the JPEG and its record
                p.unlink(missing_ok=True)
        for stem, rec in records.items():
            seq, _, key = stem.partition("-")
            jpeg = rec.with_suffix(".jpg")
            if not seq.isdigit() or not jpeg.is_file():
                rec.unlink(missing_ok=True)
                continue
            self._entries[key] = Entry(int(seq), key, rec, jpeg)
        self.next_seq = max([next_seq] + [e.seq + 1 for e in self._entries.values()])

    def _read_state(self) -> dict:
        p = self.root / "state.json"
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, ValueError):
            return {}  # the counters only; the events are the files themselves

    def _save_state(self) -> None:
        write_json(self.root / "state.json", {"next_seq": self.next_seq, **self.stats})

    # ---- the watcher's side
    def put(self, record: dict[str, Any], jpeg: bytes) -> Entry:
        """Store one event atomically (JPEG, then record); a key already waiting is replaced by the same
        event (a batch redone after a resume). Then evict the oldest while over ``max_bytes``."""
        key = str(record.get("key", ""))
        if not KEY_RE.match(key):
            raise EdgeClipError(
                f"outbox: an event needs an idempotency key of 8-64 letters, digits, - or _: {key!r}"
            )
        with self._lock:
            old = self._entries.get(key)
            seq = old.seq if old else self.next_seq
            stem = f"{seq:012d}-{key}"
            e = Entry(seq, key, self.dir / f"{stem}.json", self.dir / f"{stem}.jpg")
            with atomic_path(e.jpeg) as tmp:
                tmp.write_bytes(jpeg)
            with atomic_path(e.record) as tmp:
                tmp.write_text(json.dumps(record), encoding="utf-8")
            self._entries[key] = e
            if old:
                self.stats["replaced"] += 1
            else:
                self.next_seq += 1
                self.stats["put"] += 1
            self._evict(keep=key)
            self._save_state()
            return e

    def _evict(self, keep: str) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        for e in sorted(self._entries.values(), key=lambda e: e.seq):
            if total <= self.max_bytes:
                break
            if e.key == keep:
                continue
            n = e.nbytes
            self._remove(e)
            total -= n
            self.stats["evicted"] += 1
            self.stats["evicted_bytes"] += n

    def _remove(self, e: Entry) -> None:
        e.record.unlink(missing_ok=True)  # the record first: a JPEG alone is cleaned up at the next start
        e.jpeg.unlink(missing_ok=True)
        self._entries.pop(e.key, None)

    # ---- the sender's side
    def oldest(self, n: int = 1) -> list[Entry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.seq)[:n]

    def ack(self, e: Entry, duplicate: bool = False) -> None:
        """The collector has the event (stored now, or earlier: ``duplicate``): it leaves the outbox."""
        with self._lock:
            if self._entries.get(e.key) is e or self._entries.get(e.key) == e:
                self._remove(e)
            self.stats["duplicates" if duplicate else "sent"] += 1
            self._save_state()

    def reject(self, e: Entry, reason: str) -> None:
        """The collector refused the event for good (it would refuse it again): kept aside in ``rejected/``."""
        with self._lock:
            rej = self.root / "rejected"
            rej.mkdir(exist_ok=True)
            for p in (e.jpeg, e.record):
                if p.is_file():
                    os.replace(p, rej / p.name)
            (rej / f"{e.record.stem}.reason.txt").write_text(reason[:500] + "\n")
            self._entries.pop(e.key, None)
            self.stats["rejected"] += 1
            self._save_state()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.root), "pending": len(self), "pending_bytes": self.nbytes, **self.stats}

    def close(self) -> None:
        self._held.__exit__(None, None, None)
