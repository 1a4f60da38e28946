"""The fleet collector's HTTP service (``edgeclip collect serve --store STORE``), held to ``edgeclip serve``'s
limits (the same body, Host, header-deadline and error guards: :func:`edgeclip.serve.app.install_guards`).

Endpoints::

    POST /api/events        a device's kept frame: multipart ``meta`` (JSON) + ``file`` (JPEG), headers
                            ``Authorization: Bearer DEVICE_TOKEN`` and ``Idempotency-Key``; 201 stored, 200 a
                            duplicate (the key was stored before: nothing changes), 4xx one JSON error line
    GET  /api/campaign      ?device=ID: the newest rules for it, with an ETag (If-None-Match -> 304)
    GET  /api/search        ?q=TEXT (the teacher's text tower) &rule= &device= &verdict= &since= &until= &k=
    POST /api/search/image  multipart ``file``: search by example (the teacher's image tower), same filters
    GET  /api/blob/NAME     a stored JPEG
    GET  /api/stats         counts, verdicts, groups, seconds to searchable
    GET  /                  the search page

Device tokens (``edgeclip collect device add``) are stored as SHA-256 hashes; the search side takes an optional
``--token`` of its own (header X-Edgeclip-Token, or ``?token=`` for the page).
"""

from __future__ import annotations

import hmac
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.runtime.watch.outbox import KEY_RE
from edgeclip.serve.app import ApiError, install_guards

STATIC = Path(__file__).parent / "static"
MAX_EVENT_JPEG = 8 * 1024 * 1024
MAX_META = 256 * 1024  # an event's record: the student embedding (a few KB) and its rule's background texts


class Collector:
    """What the routes share: the store, the blobs, the teacher side and its rescoring thread."""

    def __init__(self, store, blobs, teacher, rescorer=None, token: str | None = None):
        self.store, self.blobs, self.teacher, self.rescorer, self.token = (
            store,
            blobs,
            teacher,
            rescorer,
            token,
        )
        self.ingested = 0

    def device(self, authorization: str | None) -> str:
        given = (authorization or "").removeprefix("Bearer ").strip()
        device = self.store.device_for(given) if given else None
        if device is None:
            raise ApiError(401, "unknown device token (add the device: edgeclip collect device add ID)")
        return device

    def may_search(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("x-edgeclip-token") or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "searching this collection needs its token (header X-Edgeclip-Token)")

    def ingest(self, device: str, key: str | None, meta_text: str, jpeg: bytes) -> tuple[int, dict]:
        if not key or not KEY_RE.match(key):
            raise ApiError(400, "an event needs an Idempotency-Key header of 8-64 letters, digits, - or _")
        if len(meta_text) > MAX_META:
            raise ApiError(413, f"event record over {MAX_META:,} bytes")
        try:
            meta = json.loads(meta_text)
        except ValueError:
            raise ApiError(400, "meta is not JSON") from None
        if not isinstance(meta, dict):
            raise ApiError(400, "meta must be a JSON object")
        if meta.get("key") != key:
            raise ApiError(400, "meta.key and the Idempotency-Key header differ")
        if meta.get("device") not in (None, device):
            raise ApiError(
                403, f"this token belongs to device {device!r}, the event says {meta.get('device')!r}"
            )
        emb = meta.pop("embedding", None)
        if emb is not None:
            try:
                emb = np.asarray(emb, np.float32).reshape(-1)
            except (TypeError, ValueError):
                raise ApiError(422, "embedding must be a list of numbers") from None
            if emb.shape[0] != self.store.dim or not np.isfinite(emb).all():
                raise ApiError(
                    422,
                    f"embedding has {emb.shape[0]} dims, this collection holds {self.store.dim}-d (finite)",
                )
        if not jpeg:
            raise ApiError(400, "empty frame")
        try:
            self.teacher.decode(jpeg)  # a frame the teacher cannot read is refused now, not stored
        except ImageLoadError as e:
            raise ApiError(415, str(e).replace("<bytes>", "the frame")) from None
        blob = self.blobs.put(jpeg)  # content-addressed: a retried upload writes the same blob
        row = {
            "key": key,
            "device": device,
            "rule": _text(meta.get("rule")),
            "rule_version": _text(meta.get("rule_version")),
            "query": _text(meta.get("query")),
            "t": _num(meta.get("t")),
            "kept_at": _num(meta.get("kept_at")),
            "received_at": time.time(),
            "score": _num(meta.get("score")),
            "model": _text(meta.get("model")),
            "blob": blob,
            "meta": json.dumps(meta),
        }
        try:
            stored, eid = self.store.ingest(row, emb)
        except EdgeClipError as e:
            raise ApiError(503, str(e)) from None
        if stored:
            self.ingested += 1
            if self.rescorer is not None:
                self.rescorer.wake()
        return (201 if stored else 200), {"status": "stored" if stored else "duplicate", "id": eid}

    def results(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                **{k: v for k, v in r.items() if k != "blob"},
                "image": f"/api/blob/{r['blob']}",
                "similarity": None if r.get("distance") is None else round(1.0 - float(r["distance"]), 4),
            }
            for r in rows
        ]


def _text(v) -> str | None:
    return None if v is None else str(v)[:500]


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def create_collector_app(
    collector: Collector,
    max_upload_bytes: int = MAX_EVENT_JPEG,
    max_json_bytes: int = 64 * 1024,
    body_timeout: float = 30.0,
    body_deadline: float = 120.0,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The collector's app: serve's guards, the devices' routes, the search side's routes and page. (The pixel
    budget of a frame is the teacher side's, :class:`~edgeclip.collect.teacher.TeacherSide`.)"""
    app = FastAPI(title="edgeclip collector", version="1", docs_url="/docs", redoc_url=None)
    install_guards(
        app, max_upload_bytes + MAX_META, max_json_bytes, body_timeout, body_deadline, allowed_hosts
    )
    _device_routes(app, collector, max_upload_bytes)
    _search_routes(app, collector, max_upload_bytes)
    return app


def _device_routes(app: FastAPI, c: Collector, max_upload_bytes: int) -> None:
    """POST /api/events and GET /api/campaign: what a device calls, with its token."""

    @app.post("/api/events", status_code=201)
    def ingest(
        meta: str = Form(...),
        file: UploadFile = File(...),
        authorization: str | None = Header(None),
        idempotency_key: str | None = Header(None),
    ):
        device = c.device(authorization)
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"frame over {max_upload_bytes:,} bytes")
        status, body = c.ingest(device, idempotency_key, meta, data)
        return JSONResponse(body, status_code=status)

    @app.get("/api/campaign")
    def campaign(request: Request, device: str = Query(...), authorization: str | None = Header(None)):
        if c.device(authorization) != device:
            raise ApiError(403, "a device reads its own campaign")
        found = c.store.campaign_for(device)
        if found is None:
            raise ApiError(404, "no campaign for this device")
        version, rules = found
        etag = f'"v{version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse({"version": str(version), "rules": rules}, headers={"ETag": etag})


def _search_routes(app: FastAPI, c: Collector, max_upload_bytes: int) -> None:
    """Search by text and by example, the frames, the stats and the page (with the search token, when set)."""

    def _filters(rule, device, verdict, since, until, k):
        if not 1 <= k <= 500:
            raise ApiError(422, f"k must be between 1 and 500, got {k}")
        return {"rule": rule, "device": device, "verdict": verdict, "since": since, "until": until}

    @app.get("/api/search")
    def search(
        request: Request,
        q: str | None = None,
        rule: str | None = None,
        device: str | None = None,
        verdict: str | None = None,
        since: float | None = None,
        until: float | None = None,
        k: int = 24,
    ):
        c.may_search(request)
        filters = _filters(rule, device, verdict, since, until, k)
        q = (q or "").strip()
        if len(q) > 300:
            raise ApiError(422, "a query is at most 300 characters")
        emb = c.teacher.texts([q])[0] if q else None
        return {"query": q, "results": c.results(c.store.search(emb, k, **filters))}

    @app.post("/api/search/image")
    def search_image(
        request: Request,
        file: UploadFile = File(...),
        rule: str | None = Form(None),
        device: str | None = Form(None),
        verdict: str | None = Form(None),
        since: float | None = Form(None),
        until: float | None = Form(None),
        k: int = Form(24),
    ):
        c.may_search(request)
        filters = _filters(rule, device, verdict, since, until, k)
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"image over {max_upload_bytes:,} bytes")
        try:
            img = c.teacher.decode(data)
        except ImageLoadError as e:
            raise ApiError(415, str(e).replace("<bytes>", repr(file.filename or "upload"))) from None
        emb = c.teacher.images([img])[0]
        return {"query": file.filename, "results": c.results(c.store.search(emb, k, **filters))}

    @app.get("/api/blob/{name:path}")
    def blob(name: str, request: Request):
        c.may_search(request)
        try:
            data = c.blobs.get(name)
        except (OSError, EdgeClipError, FileNotFoundError):
            raise ApiError(404, "no such frame") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400, immutable"})

    @app.get("/api/stats")
    def stats(request: Request):
        c.may_search(request)
        lat = c.store.latencies()
        return {
            **c.store.counts(),
            "teacher": c.teacher.id,
            "seconds_to_searchable": {
                "p50": float(np.percentile(lat, 50)) if lat else None,
                "p95": float(np.percentile(lat, 95)) if lat else None,
            },
        }

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="collect-static")
