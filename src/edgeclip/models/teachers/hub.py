"""Whether the model hub can serve a file now: the local cache, ``HF_HUB_OFFLINE``, one short connection. Asked
before a hub teacher's libraries are imported, so an offline machine gets its one line in seconds, not after a
minute of download retries."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

HUB_HOST = "huggingface.co"


def cached(repo: str, names: Sequence[str]) -> bool:
    """Whether one of ``names`` of hub repository ``repo`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached now (``HF_HUB_OFFLINE``, or no connection within ``timeout`` s), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError:
        return f"the model hub ({HUB_HOST}) cannot be reached and the weights are not in the local cache"
    return None
