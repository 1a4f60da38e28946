"""A bounded load test of ``edgeclip serve`` on loopback (N requests, C concurrent, p50/p95), and a server thread."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any
from urllib.parse import urlparse

from edgeclip.core.errors import EdgeClipError

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def load_test(
    url: str,
    image: bytes,
    filename: str = "image.jpg",
    requests: int = 200,
    concurrency: int = 16,
    timeout_s: float = 60.0,
    path: str = "/label",
) -> dict[str, Any]:
    """POST ``image`` to ``url + path`` ``requests`` times with ``concurrency`` in flight (loopback only)."""
    import httpx

    host = urlparse(url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise EdgeClipError(f"the load test only targets loopback addresses, not {host!r}")
    if not (1 <= requests <= 10000 and 1 <= concurrency <= 256):
        raise EdgeClipError("load test bounds: 1..10000 requests, 1..256 concurrent")

    async def run() -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        lat, errors = [], []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

            async def one(i: int):
                async with sem:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(
                            path, files={"file": (filename, image, "application/octet-stream")}
                        )
                        ok = r.status_code == 200 and "labels" in r.json()
                        if not ok:
                            errors.append(f"#{i}: HTTP {r.status_code} {r.text[:120]}")
                    except Exception as e:  # a network error counts as an error, it does not stop the test
                        errors.append(f"#{i}: {type(e).__name__}: {e}")
                    lat.append((time.perf_counter() - t0) * 1000)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(requests)))
            wall = time.perf_counter() - t0
        lat.sort()
        return {
            "requests": requests,
            "concurrency": concurrency,
            "errors": len(errors),
            "error_examples": errors[:5],
            "p50_ms": statistics.median(lat),
            "p95_ms": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
            "max_ms": lat[-1],
            "wall_s": wall,
            "requests_per_s": requests / wall,
        }

    return asyncio.run(run())


class running_server:
    """Run an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread: ``with running_server(app) as url``."""

    def __init__(self, app):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        from edgeclip.serve.protocol import uvicorn_config

        self.server = uvicorn.Server(uvicorn_config(app, port=0))

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
