"""``edgeclip serve BUNDLE``: the HTTP service and web page (binds to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeclip.core.prompts import DEFAULT_TEMPLATES


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        bundle: Path = typer.Argument(..., help="an exported bundle folder"),
        host: str = typer.Option("127.0.0.1", help="address to bind (default loopback only)"),
        port: int = typer.Option(8000),
        precision: str = typer.Option("auto", help="auto (int8 when present) | fp32 | int8"),
        threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads"),
        max_upload_mb: float = typer.Option(8.0, help="reject uploads larger than this (HTTP 413)"),
        topk: int = typer.Option(5, help="default number of labels shown"),
        teacher: str | None = typer.Option(
            None, help="teacher spec: lets the page add free-text labels (needs torch)"
        ),
    ):
        """Serve a bundle: POST /label, a web page at / to upload an image and edit the labels."""
        import uvicorn

        from edgeclip.serve.app import create_app

        enc = _text_encoder(bundle, teacher) if teacher else None
        application = create_app(
            bundle,
            precision=precision,
            threads=threads,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            topk=topk,
            text_encoder=enc,
        )
        typer.echo(f"serving {bundle} ({application.state.model.name}) on http://{host}:{port}/", err=True)
        uvicorn.run(application, host=host, port=port, log_level="warning")


def _text_encoder(bundle: Path, spec: str):
    """names -> (L, D) embeddings with the bundle's teacher text tower and templates (checked by teacher id)."""
    from edgeclip.core.errors import EdgeClipError
    from edgeclip.models.teachers import load_teacher
    from edgeclip.runtime.bundle import read_manifest
    from edgeclip.zeroshot.text import text_embeddings

    man = read_manifest(bundle)
    t = load_teacher(spec, device="cpu")
    want = (man.get("teacher") or {}).get("id")
    if t.id != want:
        raise EdgeClipError(f"--teacher {spec} is {t.id}, but the bundle's labels come from {want}")
    templates = man.get("templates") or list(DEFAULT_TEMPLATES)
    return lambda names: text_embeddings(t, names, templates).numpy()
