"""``edgeclip collect ...``: the fleet's collector: serve it, add devices, push campaigns, search."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeclip.cli.common import echo_json

app = typer.Typer(
    no_args_is_help=True, help="The fleet collector: ingest, teacher re-scoring, search, campaigns."
)
device_app = typer.Typer(no_args_is_help=True, help="Devices allowed to upload.")
campaign_app = typer.Typer(no_args_is_help=True, help="Rules pushed to the fleet.")
app.add_typer(device_app, name="device")
app.add_typer(campaign_app, name="campaign")

STORE_HELP = (
    "a folder (SQLite + sqlite-vec, blobs inside) or postgresql://USER@HOST/DB (PostgreSQL + pgvector)"
)


@app.command("serve")
def serve_cmd(
    store: str = typer.Option(..., help=STORE_HELP),
    teacher: str = typer.Option(..., help="the teacher that re-scores frames and embeds search queries"),
    blobs: str | None = typer.Option(
        None, help="where the JPEGs go: a folder or an fsspec URL (default STORE/blobs)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to bind (default loopback only)"),
    port: int = typer.Option(8100),
    token: str | None = typer.Option(
        None,
        envvar="EDGECLIP_COLLECT_TOKEN",
        help="a token for search and the page (default: none on loopback)",
    ),
    allow_host: list[str] = typer.Option([], help="Host names the server answers to besides loopback"),
    rescore: bool = typer.Option(
        True, help="the teacher's second opinion on every frame (a background thread)"
    ),
    threads: int = typer.Option(2, help="torch threads for the teacher"),
):
    """Run the collector: devices upload to POST /api/events; search at / and /api/search."""
    import torch
    import uvicorn

    from edgeclip.collect import create_collector_app, open_collector
    from edgeclip.serve.app import LOOPBACK_HOSTS
    from edgeclip.serve.protocol import uvicorn_config

    torch.set_num_threads(threads)
    hosts = [*LOOPBACK_HOSTS, *allow_host] + ([host] if host not in ("0.0.0.0", "::") else [])
    if host not in LOOPBACK_HOSTS and not token:
        raise typer.BadParameter("a collector bound beyond loopback needs --token for its search side")
    log = lambda s: typer.echo(s, err=True)  # noqa: E731
    c = open_collector(store, teacher, blobs, token, rescore, log=log)
    application = create_collector_app(c, allowed_hosts=hosts)
    typer.echo(f"collecting into {store} ({c.store.name}) on http://{host}:{port}/", err=True)
    try:
        uvicorn.Server(uvicorn_config(application, host=host, port=port)).run()
    finally:
        if c.rescorer is not None:
            c.rescorer.stop()


@device_app.command("add")
def device_add(
    device_id: str = typer.Argument(..., help="the device's id (what it passes as --device-id)"),
    store: str = typer.Option(..., help=STORE_HELP),
    token_file: Path | None = typer.Option(
        None, help="write the new token here (mode 600) instead of stdout"
    ),
):
    """Allow a device to upload: a new token, stored as its SHA-256 (adding it again replaces the token)."""
    import os
    import secrets

    from edgeclip.collect.store import open_store
    from edgeclip.core.io import atomic_path
    from edgeclip.runtime.watch.uplink import check_device_id

    check_device_id(device_id)
    token = secrets.token_urlsafe(24)
    s = open_store(store)
    s.add_device(device_id, token)
    if token_file is None:
        typer.echo(token)
        return
    with atomic_path(token_file) as tmp:
        tmp.write_text(token + "\n")
        os.chmod(tmp, 0o600)
    typer.echo(f"device {device_id}: token written to {token_file}", err=True)


@campaign_app.command("push")
def campaign_push(
    rules: Path = typer.Argument(..., help="a rules file (text queries): checked here, refused if bad"),
    store: str = typer.Option(..., help=STORE_HELP),
    devices: list[str] | None = typer.Option(
        None, help="only these devices (repeatable; default: every device)"
    ),
):
    """Store a new campaign version; devices poll for it and switch without restarting."""
    from edgeclip.collect.campaign import push
    from edgeclip.collect.store import open_store

    version = push(open_store(store), rules, devices or None)
    echo_json({"campaign": version, "rules": str(rules), "devices": devices or "all"})


@app.command("search")
def search_cmd(
    query: str | None = typer.Argument(None, help="free text (the teacher's text tower)"),
    store: str = typer.Option(..., help=STORE_HELP),
    teacher: str = typer.Option(..., help="the collection's teacher (checked against the store)"),
    image: Path | None = typer.Option(None, help="search by this example image instead of text"),
    rule: str | None = typer.Option(None),
    device: str | None = typer.Option(None),
    verdict: str | None = typer.Option(None, help="confirmed | rejected | no-query | unreadable"),
    since: float | None = typer.Option(None, help="kept at or after (Unix seconds)"),
    until: float | None = typer.Option(None, help="kept at or before (Unix seconds)"),
    k: int = typer.Option(10, help="results"),
):
    """Search the collection by text or example image, with filters; one JSON line per result."""
    from edgeclip.collect.store import open_store
    from edgeclip.collect.teacher import TeacherSide
    from edgeclip.core.errors import EdgeClipError

    if query and image:
        raise EdgeClipError("search by text or by --image, not both")
    t = TeacherSide(teacher)
    s = open_store(store, t.dim, t.id)
    emb = None
    if image is not None:
        emb = t.images([t.decode(image.read_bytes() if image.is_file() else b"")])[0]
    elif query:
        emb = t.texts([query])[0]
    for r in s.search(emb, k, rule=rule, device=device, verdict=verdict, since=since, until=until):
        r["similarity"] = None if r["distance"] is None else round(1 - float(r["distance"]), 4)
        echo_json(r)


@app.command("stats")
def stats_cmd(store: str = typer.Option(..., help=STORE_HELP)):
    """What the collection holds: events, devices, verdicts, scenes."""
    from edgeclip.collect.store import open_store

    echo_json(open_store(store).counts())
