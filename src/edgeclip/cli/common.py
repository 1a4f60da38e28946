"""What the command modules share: JSON output and device resolution. Command bodies stay thin:
options -> config -> one library call -> output."""

from __future__ import annotations

import json

import typer


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def device_of(device: str) -> str:
    from edgeclip.core.env import resolve_device

    return resolve_device(device)
