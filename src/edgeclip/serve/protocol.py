"""How ``edgeclip serve`` runs uvicorn: one config for the command and the tests, and an HTTP protocol that closes
connections which never finish their request head.

uvicorn's h11 protocol arms no timer while it waits for a request head, so a client that sends half a header and
waits holds its connection for ever; with uvicorn's ``limit_concurrency`` (which counts connections) 70 such
clients made every real request a 503. Here every connection must deliver a whole request head within
``HEADER_TIMEOUT`` seconds of connecting or of its previous response, else it is closed; a body that stalls is
answered 408 by the app's body guard (``serve.app``, ``body_timeout``). Held connections cost a small buffer
each, so the connection limit is high enough that a few hundred of them cannot starve real requests.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds for a whole request head
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
MAX_CONNECTIONS = 2048  # connections or tasks at once before uvicorn answers 503


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    header_timeout = HEADER_TIMEOUT
    _head_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no whole request head in time: a slow or idle client

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request head arrived: the app's body guard takes over
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head is due too (the keep-alive timer closes an idle one first)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, **kw):
    """The uvicorn configuration every edgeclip server runs with."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=HeadDeadlineProtocol,
        log_level=kw.pop("log_level", "warning"),
        timeout_keep_alive=KEEP_ALIVE,
        limit_concurrency=MAX_CONNECTIONS,
        **kw,
    )
