"""The fleet simulation's moving parts (``lab/fleet.py`` runs them): a fault-injecting TCP proxy on loopback and
the ``edgeclip`` processes it sits between (device watchers, collectors)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgeclip.core.errors import EdgeClipError


# ------------------------------------------------------------------------------------------ the bad link
class FaultProxy:
    """A TCP proxy on 127.0.0.1 that, per chunk, drops requests before the collector sees them (``drop``), holds
    responses back (``delay``, up to ``max_delay`` s) and resets connections instead of answering (``reset``:
    the collector has done the work, the device never hears of it). ``faults`` counts each kind."""

    def __init__(
        self, target_port: int, seed: int, drop: float, delay: float, reset: float, max_delay: float
    ):
        self.target_port, self.rng = target_port, random.Random(seed)
        self.p = {"drop": drop, "delay": delay, "reset": reset}
        self.max_delay = max_delay
        self.faults = {"drop": 0, "delay": 0, "reset": 0}
        self.upstream_refused = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()

    def start(self) -> FaultProxy:
        threading.Thread(target=self._serve, name="fault-proxy", daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def _shutdown():
            tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(_shutdown(), self.loop)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def _roll(self, kind: str) -> bool:
        if self.rng.random() < self.p[kind]:
            self.faults[kind] += 1
            return True
        return False

    async def _handle(self, reader, writer) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self.upstream_refused += 1  # the collector is down: the device sees a refused connection
            writer.transport.abort()
            return

        async def upstream():
            while data := await reader.read(65536):
                if self._roll("drop"):
                    up_w.transport.abort()
                    writer.transport.abort()
                    return
                up_w.write(data)
                await up_w.drain()

        async def downstream():
            while data := await up_r.read(65536):
                if self._roll("reset"):
                    writer.transport.abort()
                    up_w.transport.abort()
                    return
                if self._roll("delay"):
                    await asyncio.sleep(self.rng.uniform(0.1, self.max_delay))
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_w):
                w.transport.abort()


# ------------------------------------------------------------------------------------------ processes
def edgeclip_cmd() -> list[str]:
    return [sys.executable, "-m", "edgeclip"]


def child_env(threads: int) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2])
    return {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CollectorProcess:
    """``edgeclip collect serve`` as a process on 127.0.0.1 (``port``: a free one by default; a restart passes the
    old one, so the proxy in front of it stays pointed at it)."""

    def __init__(
        self,
        store: str,
        teacher: str,
        blobs: str | None,
        log_path: Path,
        rescore: bool = True,
        port: int | None = None,
    ):
        self.port = port or _free_port()
        self.cmd = edgeclip_cmd() + [
            "collect", "serve", "--store", store, "--teacher", teacher, "--port", str(self.port), "--threads", "1",
        ] + (["--blobs", blobs] if blobs else []) + ([] if rescore else ["--no-rescore"])  # fmt: skip
        self.log_path, self.p = log_path, None

    def start(self, timeout: float = 120) -> CollectorProcess:
        import httpx

        self.p = subprocess.Popen(
            self.cmd, env=child_env(1), stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab")
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.p.poll() is not None:
                raise EdgeClipError(f"the collector exited ({self.p.returncode}); see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/stats", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise EdgeClipError(f"the collector did not start in {timeout:g} s; see {self.log_path}")

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self) -> None:
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/api/stats", timeout=30).json()
