"""One background-thread shape for the long-lived workers (the device's uplink, the collector's teacher pass): a
daemon thread running ``run()`` until ``stop()``, and ``wake()`` to cut its wait short. No torch here."""

from __future__ import annotations

import threading


class Worker:
    thread_name = "edgeclip-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:  # pragma: no cover - each worker has its own
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self):
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Work is waiting: go on now rather than at the end of the current wait."""
        self._wake.set()

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds``, or until woken or stopped."""
        self._wake.wait(seconds)
        self._wake.clear()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` unless stopped (a backoff that a new event does not cut short)."""
        self._stop.wait(seconds)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
