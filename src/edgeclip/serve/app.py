"""The HTTP service of ``edgeclip serve BUNDLE`` (FastAPI): label uploads, edit labels, a web page at ``/``.

Endpoints::

    GET  /                  the web page (drop an image, see top-k labels with score bars, edit the labels)
    GET  /api/info          bundle facts, active labels, limits
    POST /label             multipart ``file`` (+ optional ``topk``, ``labels`` = 'a,b,c') -> top-k labels
    POST /caption           captioner bundles only (404 JSON error for a labeler)
    GET  /api/labels        active and known labels
    PUT  /api/labels        {"labels": [...]}: set the active labels (known ones; new ones need a text encoder)
    POST /api/labels/embeddings   {"labels": [...], "embeddings": [[...]]}: add labels from precomputed embeddings
    POST /api/labels/examples     multipart ``name`` + ``file`` (repeatable): a label from example images
                                  ("more like this": the normalised mean of their embeddings)

Every error is JSON ``{"error": "..."}`` with a 4xx status (5xx only for a real server fault); a bad
request never takes the server down. Uses only the torch-free runtime unless a text encoder is given.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.prompts import MAX_LABELS
from edgeclip.runtime import load_bundle

STATIC = Path(__file__).parent / "static"
MAX_EDIT_TEXTS = 1000  # new label texts one PUT /api/labels may embed (about 2 s of int8 text tower)
MAX_REQUEST_TEXTS = 64  # new label texts one POST /label may embed (per request; PUT /api/labels keeps them)
# the server's pixel budget, checked from the header before decoding: lower than the library's 40 Mpx
DEFAULT_MAX_PIXELS = 16_000_000
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
DEFAULT_MAX_JSON = 4 * 1024 * 1024  # label lists and embeddings (about 2,000 labels of 512-d)

TextEncoder = Callable[[Sequence[str]], np.ndarray]


class LabelsIn(BaseModel):
    labels: list[str]


class EmbeddingsIn(BaseModel):
    labels: list[str]
    embeddings: list[list[float]]
    replace: bool = False  # a label that came with the bundle keeps its embedding unless this is set


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class StreamingBodyLimit:
    """ASGI middleware that counts request body bytes as they arrive, whatever the headers say (chunked
    uploads have no Content-Length): past the limit the request ends in 413 before more is read or parsed, and a
    client that stops sending in mid-body for ``body_timeout`` seconds, or whose whole body takes over
    ``body_deadline`` seconds (a trickle), gets 408 (slow-body attacks).
    Multipart uploads get ``upload_limit`` (the image plus framing), every other body ``json_limit``."""

    def __init__(
        self,
        app,
        upload_limit: int,
        json_limit: int,
        body_timeout: float = 30.0,
        body_deadline: float = 120.0,
    ):
        self.app, self.upload_limit, self.json_limit = app, upload_limit, json_limit
        self.body_timeout, self.body_deadline = body_timeout, body_deadline

    async def __call__(self, scope, receive, send):
        import asyncio

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
        limit = self.upload_limit if ctype.startswith(b"multipart/") else self.json_limit
        state = {"seen": 0, "over": False, "started": False}
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.body_deadline  # the whole body, however it trickles in

        async def guarded_send(msg):
            if state["over"]:
                return  # the error has been sent: whatever the app answers to the cut-off body is dropped
            state["started"] = state["started"] or msg["type"] == "http.response.start"
            await send(msg)

        async def refuse(status: int, message: str):
            if not state["started"]:
                body = json.dumps({"error": message}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            state["over"] = True
            return {"type": "http.disconnect"}

        async def counted():
            if state["over"]:
                return {"type": "http.disconnect"}
            left = ends - loop.time()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, min(self.body_timeout, left)))
            except asyncio.TimeoutError:
                why = (
                    f"the request body stalled for {self.body_timeout:g} s"
                    if left > self.body_timeout
                    else f"the request body took over {self.body_deadline:g} s"
                )
                return await refuse(408, why)
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > limit:
                    return await refuse(413, f"request body over {limit:,} bytes (the server reads no more)")
            return msg

        await self.app(scope, counted, guarded_send)


@dataclass
class _Server:
    """What the routes share: the loaded bundle, the limits, the edit rights, one lock for label edits."""

    model: Any
    max_upload_bytes: int
    max_pixels: int
    max_json_bytes: int
    body_timeout: float
    body_deadline: float
    token: str | None
    read_only: bool
    topk: int
    text_encoder: TextEncoder | None
    decoding: threading.BoundedSemaphore
    allowed_hosts: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.text_encoder is None and getattr(self.model, "has_text_tower", False):
            self.text_encoder = (
                self.model.embed_labels
            )  # the bundled text tower: free-text labels without torch

    def may_edit(self, request: Request) -> None:
        """Label edits change what every client sees: they need the server's token (and no read-only mode)."""
        if self.read_only:
            raise ApiError(403, "this server is read-only: its labels cannot be changed")
        if self.token is None:
            return
        given = request.headers.get("x-edgeclip-token") or request.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(
                401,
                "changing labels needs the server's token (header X-Edgeclip-Token; the "
                "address `edgeclip serve` prints carries it for the web page)",
            )

    def request_labels(self, labels: str):
        """A per-request label set: known labels by name, any other text embedded now (with a text encoder),
        for this request only."""
        from edgeclip.runtime.bundle import LabelSet

        model, text_encoder = self.model, self.text_encoder
        names = _names(labels)
        new = [n for n in names if n not in model.known.names]
        if not new:
            return model.known.subset(names)
        if text_encoder is None:
            raise ApiError(
                400,
                f"no embedding for {', '.join(map(repr, new[:5]))}: this server has no text encoder (export "
                "the bundle with --text-encoder, or start it with --teacher SPEC)",
            )
        if len(new) > MAX_REQUEST_TEXTS:
            raise ApiError(
                422,
                f"{len(new)} new label texts in one request (at most {MAX_REQUEST_TEXTS}): add them once with "
                "PUT /api/labels",
            )
        emb = dict(zip(new, np.asarray(text_encoder(new), dtype=np.float32)))
        rows = [emb[n] if n in emb else model.known.subset([n]).embeddings[0] for n in names]
        return LabelSet(names, np.stack(rows), model.known.templates)

    def set_labels(self, names: list[str]) -> None:
        """The active label list; new texts embedded first (caps checked before any text is embedded)."""
        model, text_encoder = self.model, self.text_encoder
        with self.lock:
            known = set(model.known.names)
            unknown = [n for n in names if n not in known]
            # caps before any text is embedded (10,000 new texts took 12 s before the total cap refused them)
            if len(known) + len(unknown) > MAX_LABELS:
                raise ApiError(
                    413,
                    f"{len(known)} known + {len(unknown)} new labels is over the cap of {MAX_LABELS}: "
                    "remove labels first",
                )
            if len(unknown) > MAX_EDIT_TEXTS:
                raise ApiError(
                    413,
                    f"{len(unknown)} new label texts in one edit (at most {MAX_EDIT_TEXTS}): send them in parts",
                )
            if unknown:
                if text_encoder is None:
                    raise ApiError(
                        400,
                        f"no embedding for {', '.join(map(repr, unknown[:5]))}: this server has no text "
                        "encoder (export the bundle with --text-encoder, or start it with --teacher SPEC), "
                        "or add precomputed embeddings via POST /api/labels/embeddings",
                    )
                try:
                    model.add_labels(unknown, np.asarray(text_encoder(unknown), dtype=np.float32))
                except EdgeClipError as e:
                    raise ApiError(400, str(e)) from None
            model.set_labels(names)

    def read_upload(self, file: UploadFile) -> bytes:
        data = file.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise ApiError(413, f"upload too large (limit {self.max_upload_bytes:,} bytes)")
        if not data:
            raise ApiError(400, "empty upload")
        return data

    def decode(self, data: bytes, filename: str):
        from edgeclip.core.modality import ModalityError
        from edgeclip.runtime.labeler import to_image

        # a bundle of another modality reads the upload in its own depth and bands (a 16-bit thermal PNG, a
        # GeoTIFF tile), never through RGB, and checks its channels and bands here
        pre = getattr(self.model, "preprocess", None)
        other = getattr(pre, "modality", None) is not None
        with self.decoding:
            try:
                return pre.read(data, self.max_pixels) if other else to_image(data, self.max_pixels)
            except (ImageLoadError, ModalityError) as e:
                raise ApiError(415, str(e).replace("<bytes>", repr(filename or "upload"))) from None


def create_app(
    bundle: str | os.PathLike,
    precision: str = "auto",
    threads: int | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_workers: int = 2,
    max_json_bytes: int = DEFAULT_MAX_JSON,
    token: str | None = None,
    body_timeout: float = 30.0,
    body_deadline: float = 120.0,
    read_only: bool = False,
    allowed_hosts: list[str] | None = None,
    topk: int = 5,
    text_encoder: TextEncoder | None = None,
) -> FastAPI:
    """Load the bundle (hashes verified) and build the app. ``text_encoder``: names -> (L, D) teacher text
    embeddings, to let the page add labels the bundle has no embedding for (needs the teacher and torch)."""
    s = _Server(
        model=load_bundle(bundle, precision=precision, threads=threads),
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_json_bytes=max_json_bytes,
        body_timeout=body_timeout,
        body_deadline=body_deadline,
        token=token,
        read_only=read_only,
        topk=topk,
        text_encoder=text_encoder,
        decoding=threading.BoundedSemaphore(
            max(1, decode_workers)
        ),  # concurrent decodes cannot stack up memory
        allowed_hosts=allowed_hosts,
    )
    app = FastAPI(title="edgeclip", version="1", docs_url="/docs", redoc_url=None)
    app.state.model = s.model
    for install in (_guards, _pages, _inference, _labels):
        install(app, s)
    return app


def _guards(app: FastAPI, s: _Server) -> None:
    install_guards(
        app, s.max_upload_bytes, s.max_json_bytes, s.body_timeout, s.body_deadline, s.allowed_hosts
    )


def install_guards(
    app: FastAPI,
    max_upload_bytes: int,
    max_json_bytes: int,
    body_timeout: float,
    body_deadline: float,
    allowed_hosts: list[str] | None,
) -> None:
    """Error handlers as one-line JSON, body and Host limits: every edgeclip HTTP surface (``serve``, the fleet
    collector) installs the same ones."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _err(exc.status, exc.message)

    app.add_middleware(
        StreamingBodyLimit,
        upload_limit=max_upload_bytes + 64 * 1024,
        json_limit=max_json_bytes,
        body_timeout=body_timeout,
        body_deadline=body_deadline,
    )
    # DNS rebinding: a page on another site that resolves its name to this machine is refused by Host
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK_HOSTS))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return _err(422, "bad request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _err(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # pragma: no cover - a bug, not bad input
        return _err(
            500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        )

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        if request.method in ("POST", "PUT"):
            cl = request.headers.get("content-length")
            try:
                too_big = (
                    cl is not None and int(cl) > max_upload_bytes + 64 * 1024
                )  # multipart framing allowance
            except ValueError:
                return _err(400, "bad Content-Length header")
            if too_big:
                return _err(413, f"upload too large: {int(cl):,} bytes (limit {max_upload_bytes:,})")
        return await call_next(request)


def _pages(app: FastAPI, s: _Server) -> None:
    """The web page and what it asks the server about."""
    model, topk, text_encoder, max_upload_bytes, token, read_only = (
        s.model,
        s.topk,
        s.text_encoder,
        s.max_upload_bytes,
        s.token,
        s.read_only,
    )

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info():
        desc = model.describe() if hasattr(model, "describe") else {"kind": getattr(model, "kind", "?")}
        return {
            **desc,
            "max_upload_bytes": max_upload_bytes,
            "topk": topk,
            "can_add_free_text_labels": text_encoder is not None,
            "labels_editable": not read_only,
            "needs_token": token is not None,
            "caption": hasattr(model, "caption"),
        }


def _inference(app: FastAPI, s: _Server) -> None:
    """POST /label and POST /caption."""
    model, topk, _decode, _read_upload = s.model, s.topk, s.decode, s.read_upload

    @app.post("/label")
    def label(
        file: UploadFile = File(...),
        topk_form: int | None = Form(None, alias="topk"),
        topk_query: int | None = Query(None, alias="topk"),
        labels: str | None = Form(None),
    ):
        topk_ = next((k for k in (topk_form, topk_query) if k is not None), topk)
        if not 1 <= topk_ <= 1000:
            raise ApiError(422, f"topk must be between 1 and 1000, got {topk_}")
        if not hasattr(model, "label"):
            raise ApiError(
                404, f"this is a {getattr(model, 'kind', '?')!r} bundle: it does not label (use /caption)"
            )
        img = _decode(_read_upload(file), file.filename)
        try:
            active = s.request_labels(labels) if labels else None
        except EdgeClipError as e:
            raise ApiError(400, str(e)) from None
        t0 = time.perf_counter()
        res = model.label(img, topk_, active)
        return {
            "image": file.filename,
            "labels": res,
            "model": model.name,
            "ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    @app.post("/caption")
    def caption(file: UploadFile = File(...)):
        if not hasattr(model, "caption"):
            raise ApiError(
                404,
                f"this is a {getattr(model, 'kind', '?')!r} bundle: /caption needs a captioner bundle "
                "(use POST /label)",
            )
        img = _decode(_read_upload(file), file.filename)
        return {"image": file.filename, "caption": model.caption(img), "model": model.name}


def _labels(app: FastAPI, s: _Server) -> None:
    """Reading and editing the label list (edits need the token)."""
    model, lock = s.model, s.lock
    _decode, _read_upload, _may_edit = s.decode, s.read_upload, s.may_edit

    def _need_labels():
        if not hasattr(model, "known"):
            raise ApiError(404, f"this is a {getattr(model, 'kind', '?')!r} bundle: it has no label list")

    @app.get("/api/labels")
    def get_labels():
        _need_labels()
        return {"labels": model.label_names, "known": list(model.known.names)}

    @app.put("/api/labels")
    def put_labels(body: LabelsIn, request: Request):
        _need_labels()
        _may_edit(request)
        s.set_labels(_names(body.labels))
        return {"labels": model.label_names}

    @app.post("/api/labels/examples")
    def add_examples(
        request: Request,
        name: str = Form(...),
        file: list[UploadFile] = File(...),
        replace: bool = Form(False),
    ):
        _need_labels()
        _may_edit(request)
        if len(file) > 16:
            raise ApiError(422, f"at most 16 example images per label, got {len(file)}")
        images = [_decode(_read_upload(f), f.filename) for f in file]
        with lock:
            try:
                model.add_examples(name, images, replace=replace)
            except EdgeClipError as e:
                raise ApiError(400, str(e)) from None
        return {"labels": model.label_names, "added": " ".join(name.split()), "examples": len(images)}

    @app.post("/api/labels/embeddings")
    def add_embeddings(body: EmbeddingsIn, request: Request):
        _need_labels()
        _may_edit(request)
        with lock:
            try:
                model.add_labels(
                    body.labels, np.asarray(body.embeddings, dtype=np.float32), replace=body.replace
                )
            except (EdgeClipError, ValueError) as e:
                raise ApiError(400, str(e)) from None
        return {"labels": model.label_names}


def _names(labels) -> list[str]:
    from edgeclip.core.prompts import clean_labels

    try:
        return clean_labels(labels)  # the cap (MAX_LABELS) is checked before any cleaning
    except EdgeClipError as e:
        raise ApiError(400, str(e)) from None
