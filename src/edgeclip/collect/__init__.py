"""The fleet's collector (``edgeclip collect``): the server half of Clip4Retrofit's collection loop.

Devices (``edgeclip watch --upload``) send the frames they keep through their outbox; the collector stores each
once (idempotency keys), puts the JPEG in a blob store (:mod:`.blobs`) and the record and the student's embedding
in a database with vector search (:mod:`.store`: SQLite + sqlite-vec by default, PostgreSQL + pgvector for many
collectors), asks the teacher for a second opinion and a near-duplicate group (:mod:`.teacher`), serves search
by text and by example (:mod:`.app`, with a page), and hands out campaigns: versioned rules files the devices
poll and switch to without a restart (:mod:`.campaign`). Torch lives here (the teacher), never on the device.
"""

from __future__ import annotations

import os

from edgeclip.collect.app import Collector, create_collector_app
from edgeclip.collect.blobs import Blobs
from edgeclip.collect.store import Store, open_store
from edgeclip.collect.teacher import Rescorer, TeacherSide


def open_collector(
    store: str | os.PathLike,
    teacher: str,
    blobs: str | os.PathLike | None = None,
    token: str | None = None,
    rescore: bool = True,
    log=print,
) -> Collector:
    """The store (made on first use), its blobs (``STORE/blobs`` for a folder store), the teacher and, unless
    ``rescore`` is off, its rescoring thread (started)."""
    t = TeacherSide(teacher)
    st = open_store(store, t.dim, t.id)
    if blobs is None:
        if str(store).startswith(("postgresql://", "postgres://")):
            from edgeclip.core.errors import EdgeClipError

            raise EdgeClipError("a PostgreSQL store needs --blobs (a folder or an fsspec URL) for the frames")
        blobs = os.path.join(str(store), "blobs")
    b = Blobs(blobs)
    rescorer = Rescorer(st, b, t, log=log).start() if rescore else None
    return Collector(st, b, t, rescorer, token)


__all__ = [
    "Blobs",
    "Collector",
    "Rescorer",
    "Store",
    "TeacherSide",
    "create_collector_app",
    "open_collector",
    "open_store",
]
