"""Where the collector keeps what the fleet sends: event metadata and embeddings in a database with vector search.

Two stores behind one interface, so the collector, the search and the tests do not care which:

- :class:`SqliteStore` (the default: ``--store FOLDER``): SQLite in WAL mode with the sqlite-vec extension
  (through apsw, whose SQLite may load extensions), one file ``FOLDER/collection.db``, no server. Exact vector
  search (``vec_distance_cosine``) in the same query as the filters; fine to ~10^5-10^6 events on one machine.
- :class:`PostgresStore` (``--store postgresql://...``): PostgreSQL + pgvector, for several collector processes
  on one database and collections past one machine's file: an HNSW index (cosine) on the teacher embeddings.

Why these and not LanceDB (the other embedded candidate): exactly-once ingest is a UNIQUE idempotency key and
the event's row written in one transaction, and the teacher's verdict is an in-place update of that row; SQLite
and PostgreSQL do both natively, LanceDB has neither unique constraints nor row updates short of rewriting a
fragment. sqlite-vec adds vectors to the database that already gives the transactions; pgvector does the same for
PostgreSQL, so the two stores share one schema and one set of queries.

Rows: ``devices`` (id, sha256 of its token), ``events`` (one per kept frame: idempotency key, device, rule and
rule version, the rule's query, stream and wall times, the student's score and embedding, the blob name, the
teacher's embedding, score and verdict, the near-duplicate group), ``campaigns`` (versioned rules files, with
the devices they are for).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError

EVENT_COLUMNS = (
    "key",
    "device",
    "rule",
    "rule_version",
    "query",
    "t",
    "kept_at",
    "received_at",
    "score",
    "model",
    "blob",
    "meta",
)
FILTERS = ("rule", "device", "since", "until", "verdict", "rule_version")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_store(spec: str | os.PathLike, dim: int | None = None, teacher: str = "") -> Store:
    """``postgresql://...`` -> :class:`PostgresStore`; anything else is a folder for :class:`SqliteStore`. With
    ``dim`` and ``teacher`` the store is made on first use and checked to be theirs; without, it must exist."""
    s = str(spec)
    if dim is None and not s.startswith(("postgresql://", "postgres://")):
        if not (Path(s) / "collection.db").is_file():
            raise EdgeClipError(f"no collection at {s} (start one with `edgeclip collect serve --store {s}`)")
    if s.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(s, dim)
    else:
        store = SqliteStore(Path(s) / "collection.db", dim)
    if dim is None:
        rows = store._execute(store._q("SELECT value FROM meta WHERE name = ?"), ("dim",))
        if not rows:
            raise EdgeClipError(f"{s} holds no collection yet (start `edgeclip collect serve` on it first)")
        store.dim = int(rows[0][0])
    else:
        _check_meta(store, {"dim": str(int(dim)), "teacher": teacher})
    return store


class Store:
    """What both databases do; subclasses give the connection, the placeholders and the vector functions."""

    dim: int
    name: str

    # ---- dialect
    def _q(self, sql: str) -> str:
        return sql

    def _vec(self, v) -> Any:
        raise NotImplementedError

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _distance(self, column: str) -> str:
        raise NotImplementedError

    def _insert_ignore(self, table: str, cols: tuple[str, ...]) -> str:
        raise NotImplementedError

    # ---- devices
    def add_device(self, device: str, token: str) -> None:
        self._execute(
            self._q("DELETE FROM devices WHERE id = ?"),
            (device,),
        )
        self._execute(
            self._q("INSERT INTO devices (id, token_sha256) VALUES (?, ?)"), (device, token_hash(token))
        )

    def device_for(self, token: str) -> str | None:
        rows = self._execute(self._q("SELECT id FROM devices WHERE token_sha256 = ?"), (token_hash(token),))
        return rows[0][0] if rows else None

    # ---- events
    def ingest(self, ev: dict[str, Any], student_emb: np.ndarray | None) -> tuple[bool, int]:
        """Insert one event unless its key is stored already; -> (stored now, the event's id)."""
        cols = (*EVENT_COLUMNS, "student_emb")
        vals = tuple(ev.get(c) for c in EVENT_COLUMNS) + (
            self._vec(student_emb) if student_emb is not None else None,
        )
        rows = self._execute(self._insert_ignore("events", cols), vals)
        if rows:
            return True, int(rows[0][0])
        rows = self._execute(self._q("SELECT id FROM events WHERE key = ?"), (ev["key"],))
        return False, int(rows[0][0])

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """Events the teacher has not looked at yet, oldest first."""
        rows = self._execute(
            self._q("SELECT id, blob, query, meta FROM events WHERE verdict IS NULL ORDER BY id LIMIT ?"),
            (limit,),
        )
        return [{"id": r[0], "blob": r[1], "query": r[2], "meta": json.loads(r[3] or "{}")} for r in rows]

    def set_teacher(
        self, event_id: int, emb: np.ndarray | None, score: float | None, verdict: str, group: int
    ) -> None:
        self._execute(
            self._q(
                "UPDATE events SET teacher_emb = ?, teacher_score = ?, verdict = ?, grp = ?, searchable_at = ? "
                "WHERE id = ?"
            ),
            (None if emb is None else self._vec(emb), score, verdict, group, time.time(), event_id),
        )

    def search(
        self,
        emb: np.ndarray | None = None,
        k: int = 20,
        column: str = "teacher_emb",
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Events nearest ``emb`` (cosine, exact on SQLite, HNSW on PostgreSQL) or newest first, filtered by
        rule, device, time (``since``/``until``, wall-clock seconds) and the teacher's verdict."""
        if column not in ("teacher_emb", "student_emb"):
            raise EdgeClipError(f"search: no embedding column {column!r}")
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise EdgeClipError(
                f"search: unknown filter {sorted(unknown)[0]!r} (filters: {', '.join(FILTERS)})"
            )
        where, args = [], []
        for f, v in filters.items():
            if v is None or v == "":
                continue
            if f == "since":
                where.append("kept_at >= ?")
            elif f == "until":
                where.append("kept_at <= ?")
            else:
                where.append(f"{f} = ?")
            args.append(v)
        select = (
            "SELECT id, key, device, rule, rule_version, query, t, kept_at, received_at, score, model, blob, "
            "teacher_score, verdict, grp"
        )
        if emb is not None:
            where.append(f"{column} IS NOT NULL")
            dist = self._distance(column)
            sql = f"{select}, {dist} AS distance FROM events"
            args = [self._vec(emb), *args]
            order = "distance"
        else:
            sql, order = f"{select}, NULL AS distance FROM events", "id DESC"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        rows = self._execute(self._q(sql), (*args, int(k)))
        names = select.removeprefix("SELECT ").replace(" ", "").split(",") + ["distance"]
        return [dict(zip(names, r)) for r in rows]

    def nearest_group(self, emb: np.ndarray, before_id: int, max_distance: float) -> int | None:
        """The near-duplicate group of the closest earlier event within ``max_distance`` (any device)."""
        rows = self._execute(
            self._q(
                f"SELECT grp, {self._distance('teacher_emb')} AS d FROM events "
                "WHERE teacher_emb IS NOT NULL AND id < ? ORDER BY d LIMIT 1"
            ),
            (self._vec(emb), before_id),
        )
        return int(rows[0][0]) if rows and rows[0][1] is not None and rows[0][1] <= max_distance else None

    def counts(self) -> dict[str, Any]:
        (n, teacher, groups, first, last), *_ = self._execute(
            "SELECT COUNT(*), COUNT(teacher_emb), COUNT(DISTINCT grp), MIN(received_at), MAX(received_at) "
            "FROM events"
        )
        verdicts = dict(self._execute("SELECT COALESCE(verdict, 'pending'), COUNT(*) FROM events GROUP BY 1"))
        per_device = dict(self._execute("SELECT device, COUNT(*) FROM events GROUP BY device"))
        return {
            "store": self.name,
            "events": int(n),
            "rescored": int(teacher),
            "groups": int(groups),
            "verdicts": {str(k): int(v) for k, v in verdicts.items()},
            "per_device": {str(k): int(v) for k, v in per_device.items()},
            "first_received": first,
            "last_received": last,
        }

    def latencies(self) -> list[float]:
        """Seconds from a frame being kept on the device to its being searchable (teacher-embedded)."""
        rows = self._execute("SELECT searchable_at - kept_at FROM events WHERE searchable_at IS NOT NULL")
        return [float(r[0]) for r in rows]

    # ---- campaigns
    def push_campaign(self, rules: dict[str, Any], devices: list[str] | None) -> int:
        rows = self._execute("SELECT COALESCE(MAX(version), 0) + 1 FROM campaigns")
        version = int(rows[0][0])
        self._execute(
            self._q("INSERT INTO campaigns (version, rules, devices, created_at) VALUES (?, ?, ?, ?)"),
            (version, json.dumps(rules), json.dumps(sorted(devices)) if devices else None, time.time()),
        )
        return version

    def campaign_for(self, device: str) -> tuple[int, dict[str, Any]] | None:
        """The newest campaign for ``device`` (one for every device, or naming it)."""
        for version, rules, devices in self._execute(
            "SELECT version, rules, devices FROM campaigns ORDER BY version DESC"
        ):
            if devices is None or device in json.loads(devices):
                return int(version), json.loads(rules)
        return None

    def close(self) -> None:
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events (
    id {serial},
    key TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    rule TEXT,
    rule_version TEXT,
    query TEXT,
    t DOUBLE PRECISION,
    kept_at DOUBLE PRECISION,
    received_at DOUBLE PRECISION,
    searchable_at DOUBLE PRECISION,
    score DOUBLE PRECISION,
    model TEXT,
    blob TEXT NOT NULL,
    meta TEXT,
    student_emb {vec},
    teacher_emb {vec},
    teacher_score DOUBLE PRECISION,
    verdict TEXT,
    grp BIGINT
);
CREATE INDEX IF NOT EXISTS events_rule ON events (rule);
CREATE INDEX IF NOT EXISTS events_device ON events (device);
CREATE INDEX IF NOT EXISTS events_kept_at ON events (kept_at);
CREATE TABLE IF NOT EXISTS campaigns (
    version BIGINT PRIMARY KEY, rules TEXT NOT NULL, devices TEXT, created_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""


class SqliteStore(Store):
    """SQLite (WAL) + sqlite-vec through apsw; one connection per thread."""

    name = "sqlite+sqlite-vec"

    def __init__(self, path: str | os.PathLike, dim: int | None):
        try:
            import apsw
            import sqlite_vec
        except ImportError:
            raise EdgeClipError(
                "the collector's embedded store needs apsw and sqlite-vec: pip install 'edgeclip[fleet]'"
            ) from None
        self.path, self.dim = Path(path), int(dim or 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._apsw, self._ext = apsw, sqlite_vec.loadable_path()
        self._local = threading.local()
        c = self._conn()
        with c:
            for stmt in SCHEMA.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", vec="BLOB").split(";"):
                if stmt.strip():
                    c.execute(stmt)

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._apsw.Connection(str(self.path))
            c.enable_load_extension(True)
            c.load_extension(self._ext)
            c.enable_load_extension(False)
            c.setbusytimeout(30_000)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        return list(self._conn().execute(sql, args))

    def _vec(self, v) -> bytes:
        return np.asarray(v, np.float32).reshape(-1).tobytes()

    def _distance(self, column: str) -> str:
        return f"vec_distance_cosine({column}, ?)"

    def _insert_ignore(self, table: str, cols: tuple[str, ...]) -> str:
        marks = ", ".join("?" for _ in cols)
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT (key) DO NOTHING RETURNING id"


class PostgresStore(Store):
    """PostgreSQL + pgvector through psycopg 3; one connection per thread, autocommit (each statement is its own
    transaction; the ingest is one INSERT ... ON CONFLICT DO NOTHING)."""

    name = "postgresql+pgvector"

    def __init__(self, url: str, dim: int | None):
        try:
            import psycopg
        except ImportError:
            raise EdgeClipError("a PostgreSQL store needs psycopg: pip install 'edgeclip[fleet]'") from None
        self.url, self.dim, self._psycopg = url, int(dim or 0), psycopg
        self._local = threading.local()
        c = self._conn()
        if dim is None:
            return  # an existing collection (open_store reads its dimension)
        try:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise EdgeClipError(
                f"PostgreSQL at {_safe_url(url)} has no pgvector extension ({str(e).splitlines()[0]}): install "
                "it (Debian: postgresql-NN-pgvector)"
            ) from None
        with c.transaction():
            c.execute(
                "SELECT pg_advisory_xact_lock(4242)"
            )  # two collectors starting at once: one makes the schema
            for stmt in SCHEMA.format(serial="BIGSERIAL PRIMARY KEY", vec=f"vector({self.dim})").split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(
                "CREATE INDEX IF NOT EXISTS events_teacher_hnsw ON events USING hnsw (teacher_emb vector_cosine_ops)"
            )

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None or c.closed:
            try:
                c = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except self._psycopg.Error as e:
                raise EdgeClipError(
                    f"cannot connect to PostgreSQL at {_safe_url(self.url)}: {str(e).strip().splitlines()[0]}"
                ) from None
            self._local.conn = c
        return c

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        cur = self._conn().execute(self._q(sql), args)
        return cur.fetchall() if cur.description else []

    def _vec(self, v) -> str:
        return "[" + ",".join(f"{float(x):.7g}" for x in np.asarray(v, np.float32).reshape(-1)) + "]"

    def _distance(self, column: str) -> str:
        return f"({column} <=> %s::vector)"

    def _insert_ignore(self, table: str, cols: tuple[str, ...]) -> str:
        marks = ", ".join("%s" for _ in cols)
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT (key) DO NOTHING RETURNING id"

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()


def _check_meta(store: Store, facts: dict[str, str]) -> None:
    """A store holds one embedding space: its dimension and teacher are recorded once and checked at every open
    (a collection searched with another teacher's text tower would answer nonsense)."""
    for name, value in facts.items():
        rows = store._execute(store._q("SELECT value FROM meta WHERE name = ?"), (name,))
        if not rows:
            insert = "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING"
            store._execute(store._q(insert), (name, value))
        elif rows[0][0] != value:
            raise EdgeClipError(
                f"this store was made with {name} {rows[0][0]!r}, not {value!r}: use the teacher it was made with, "
                "or another store"
            )


def _safe_url(url: str) -> str:
    """The database address without its password, for error lines."""
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
