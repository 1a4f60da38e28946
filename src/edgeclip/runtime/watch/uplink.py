"""The device's link to the collector (``edgeclip watch ... --upload URL --device-id ID``): a background thread that
sends the outbox oldest first and polls the campaign, with no torch.

- Sending: ``POST URL/api/events`` (multipart ``meta`` JSON + ``file`` JPEG) with ``Authorization: Bearer TOKEN``
  and ``Idempotency-Key: KEY``. 201 (stored) or 200 (a duplicate: stored before) -> the event leaves the outbox;
  400/413/415/422 -> it is set aside in ``rejected/`` (sending it again would be refused again); anything else
  (no network, a reset, a timeout, 408/429/5xx, 401 while a token is being fixed) -> retried with exponential
  backoff and jitter, from ``backoff`` up to ``max_backoff`` seconds, for as long as it takes.
- Campaigns: ``GET URL/api/campaign?device=ID`` every ``poll`` seconds with ``If-None-Match``; a new version is
  checked with the rules reader the watcher uses and handed to ``on_campaign``; a version the device cannot use
  is reported and the current rules stay. The last one used is kept in ``OUTBOX/campaign.json`` (a reboot starts
  with it).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.core.worker import Worker
from edgeclip.runtime.watch.outbox import Entry, Outbox

# the collector would refuse the same request again; a 404 is a wrong address (fixable): retried
PERMANENT = {400, 413, 415, 422}


def read_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str:
    """The device token: ``token_file`` (first line), else ``token``, else $EDGECLIP_DEVICE_TOKEN."""
    if token_file:
        try:
            t = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as e:
            raise EdgeClipError(f"cannot read the token file {token_file}: {e.strerror}") from None
        token = t[0].strip() if t else ""
    token = token or os.environ.get("EDGECLIP_DEVICE_TOKEN", "")
    if not token:
        raise EdgeClipError("--upload needs a device token: --token-file FILE or $EDGECLIP_DEVICE_TOKEN")
    return token


class Uplink(Worker):
    """Sends the outbox and polls campaigns in one daemon thread; ``stats`` counts what happened."""

    thread_name = "edgeclip-uplink"

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        device_id: str,
        token: str,
        on_campaign: Callable[[dict[str, Any], str], str | None] | None = None,
        poll: float = 30.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        log: Callable[[str], None] = print,
    ):
        import httpx

        super().__init__()
        if not url.startswith(("http://", "https://")):
            raise EdgeClipError(f"--upload must be an http:// or https:// address, got {url!r}")
        self.outbox, self.url, self.device = outbox, url.rstrip("/"), device_id
        self.on_campaign, self.poll, self.log = on_campaign, poll, log
        self.backoff0, self.max_backoff = backoff, max_backoff
        self.client = httpx.Client(
            timeout=timeout, headers={"Authorization": f"Bearer {token}", "X-Edgeclip-Device": device_id}
        )
        self.stats = {"attempts": 0, "failures": 0, "campaigns": 0, "campaigns_refused": 0}
        self.last_error: str | None = None
        self.campaign = self._saved_campaign()

    # ---- lifecycle
    def drain(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the outbox to empty; -> whether it did."""
        end = time.monotonic() + seconds
        self.wake()
        while len(self.outbox) and time.monotonic() < end:
            time.sleep(0.05)
        return not len(self.outbox)

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        self.client.close()

    # ---- the thread
    def run(self) -> None:
        delay, next_poll = 0.0, 0.0
        while not self.stopping:
            if self.on_campaign is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll
                self._poll_campaign()
            batch = self.outbox.oldest(1)
            if not batch:
                self.idle(min(1.0, self.poll))
                continue
            if self._send(batch[0]):
                delay = 0.0
                continue
            # jittered exponential backoff: a thousand cars that lost the same tower do not come back in step
            delay = min(self.max_backoff, max(self.backoff0, delay * 2))
            self.pause(delay * random.uniform(0.5, 1.0))

    def _send(self, e: Entry) -> bool:
        """-> True when the event left the outbox (sent, duplicate or rejected), False to retry later."""
        import httpx

        try:
            record, jpeg = e.read()
        except (OSError, ValueError):  # evicted while we looked, or damaged on disk
            if e.record.is_file():
                self.outbox.reject(e, "unreadable on the device")
            return True
        self.stats["attempts"] += 1
        try:
            r = self.client.post(
                f"{self.url}/api/events",
                headers={"Idempotency-Key": e.key},
                data={"meta": json.dumps(record)},
                files={"file": (f"{e.key}.jpg", jpeg, "image/jpeg")},
            )
        except httpx.HTTPError as err:
            return self._failed(f"{type(err).__name__}: {str(err)[:120]}")
        if r.status_code in (200, 201):
            self.outbox.ack(e, duplicate=r.status_code == 200)
            self.last_error = None
            return True
        why = _error_text(r)
        if r.status_code in PERMANENT:
            self.outbox.reject(e, f"HTTP {r.status_code}: {why}")
            self.log(f"upload: the collector refused event {e.key} for good (HTTP {r.status_code}: {why})")
            return True
        return self._failed(f"HTTP {r.status_code}: {why}")

    def _failed(self, why: str) -> bool:
        self.stats["failures"] += 1
        if why != self.last_error:
            self.log(f"upload: {why}; retrying with backoff ({len(self.outbox)} events waiting)")
        self.last_error = why
        return False

    # ---- campaigns
    def _saved_campaign(self) -> dict[str, Any] | None:
        p = self.outbox.root / "campaign.json"
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, ValueError):
            return None

    def _poll_campaign(self) -> None:
        import httpx

        etag = (self.campaign or {}).get("etag")
        try:
            r = self.client.get(
                f"{self.url}/api/campaign",
                params={"device": self.device},
                headers={"If-None-Match": etag} if etag else {},
            )
        except httpx.HTTPError:
            return  # the send path reports the link; the next poll tries again
        if r.status_code != 200:
            return  # 304: unchanged; 404: no campaign for this device
        try:
            body = r.json()
            rules, version = body["rules"], str(body["version"])
        except (ValueError, KeyError, TypeError):
            self.log("campaign: the collector sent an unreadable campaign; keeping the current rules")
            return
        problem = self.on_campaign(rules, version) if self.on_campaign else None
        self.campaign = {"version": version, "etag": r.headers.get("etag"), "rules": rules}
        if problem:  # remembered by its ETag, so it is not fetched again until the collector has a new one
            self.stats["campaigns_refused"] += 1
            self.log(f"campaign {version}: not used ({problem}); keeping the current rules")
            self.campaign["refused"] = problem
        else:
            self.stats["campaigns"] += 1
            self.log(f"campaign {version}: switched rules")
        write_json(self.outbox.root / "campaign.json", self.campaign)


def check_device_id(device_id: str) -> str:
    if not device_id or not all(c.isalnum() or c in "-_." for c in device_id) or len(device_id) > 64:
        raise EdgeClipError(f"a device id is 1-64 letters, digits, '-', '_' or '.', got {device_id!r}")
    return device_id


def _error_text(r) -> str:
    try:
        return str(r.json().get("error", ""))[:200]
    except ValueError:
        return r.text[:200]


class FleetLink:
    """What ``edgeclip watch --upload`` adds to the watcher: the outbox (its ``sink``), the uplink thread, and
    the campaign a poll brought, checked by the strict rules reader and waiting for the loop to switch to."""

    def __init__(
        self,
        outbox: str | os.PathLike,
        url: str,
        device_id: str,
        token: str,
        max_bytes: int,
        poll: float = 30.0,
        log: Callable[[str], None] = print,
        **uplink_kw,
    ):
        from edgeclip.runtime.watch.outbox import DEFAULT_MAX_BYTES

        check_device_id(device_id)
        self.device, self.log = device_id, log
        self.outbox = Outbox(outbox, max_bytes or DEFAULT_MAX_BYTES)
        self._lock = threading.Lock()
        self._next = None
        self.uplink = Uplink(
            self.outbox, url, device_id, token, on_campaign=self._offer, poll=poll, log=log, **uplink_kw
        )

    def _offer(self, rules: dict[str, Any], version: str) -> str | None:
        from edgeclip.runtime.watch.rules import load_rules

        try:
            r = load_rules(rules, version=version, campaign=True)
        except EdgeClipError as e:
            return str(e)
        with self._lock:
            self._next = r
        return None

    def saved_rules(self):
        """The campaign this device last switched to (a reboot starts with it), or None."""
        from edgeclip.runtime.watch.rules import load_rules

        c = self.uplink.campaign
        if not c or c.get("refused"):
            return None
        try:
            return load_rules(c["rules"], version=str(c["version"]), campaign=True)
        except (EdgeClipError, KeyError, TypeError):
            return None

    def take_rules(self):
        """A campaign waiting to be switched to, once."""
        with self._lock:
            r, self._next = self._next, None
        return r

    def sink(self, record: dict[str, Any], jpeg: bytes) -> None:
        record["device"] = self.device
        self.outbox.put(record, jpeg)
        self.uplink.wake()

    def start(self) -> FleetLink:
        self.uplink.start()
        return self

    def close(self, drain: float) -> dict[str, Any]:
        """Send what is waiting for up to ``drain`` seconds, stop; what is left is sent at the next start."""
        drained = self.uplink.drain(drain) if drain > 0 else not len(self.outbox)
        self.uplink.stop()
        out = {**self.outbox.describe(), **self.uplink.stats, "drained": drained}
        self.outbox.close()
        return out
