"""Campaigns: a rules file pushed to the fleet (all devices, or some). It is read by the same strict reader the
watcher uses (``load_rules(..., campaign=True)``) at push time, so a bad campaign is refused here and never
reaches a device; devices read it again before switching."""

from __future__ import annotations

import os
from typing import Any

from edgeclip.core.config import read_yaml
from edgeclip.core.errors import EdgeClipError
from edgeclip.runtime.watch.rules import load_rules


def read_campaign(path: str | os.PathLike) -> dict[str, Any]:
    """A rules file as a campaign: checked, and returned as the dict the devices get."""
    d = read_yaml(path, "campaign rules file")
    if not isinstance(d, dict):
        raise EdgeClipError(f"{path}: a campaign is a rules file (a mapping with `rules:`)")
    load_rules(d, version="push", campaign=True)
    return d


def push(store, path: str | os.PathLike, devices: list[str] | None = None) -> int:
    """Check and store a campaign; -> its version."""
    rules = read_campaign(path)
    if devices is not None and not devices:
        raise EdgeClipError("--devices names no device")
    return store.push_campaign(rules, devices)
