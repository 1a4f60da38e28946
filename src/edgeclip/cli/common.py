"""What the command modules share: JSON output and device resolution. Command bodies stay thin:
options -> config -> one library call -> output."""

from __future__ import annotations

import json

import typer


def echo_json(obj) -> None:
    """A command's JSON result: one line on stdout, so it pipes into jq and reads as JSON Lines."""
    typer.echo(json.dumps(obj, default=str, ensure_ascii=False))


def device_of(device: str) -> str:
    from edgeclip.core.machine import resolve_device

    return resolve_device(device)
